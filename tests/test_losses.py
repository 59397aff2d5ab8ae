"""The four losses and their helpers against values computed by hand on tiny tensors."""

import math

import pytest
import torch

from recon_ft.method import losses as L


def test_caption_loss_hand_computed_and_prompt_excluded():
    # Position 0 predicts label[1] = 0 from uniform logits: -log(1/2).
    # Position 1 predicts label[2] = 1 with p = 3/4: -log(3/4). Position 2 predicts nothing.
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)], [5.0, -5.0]]])
    labels = torch.tensor([[L.IGNORE_INDEX, 0, 1]])
    expected = (math.log(2) + math.log(4 / 3)) / 2
    assert L.caption_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)

    # Masking the second target (a prompt position) leaves only the first term.
    labels_prompt = torch.tensor([[L.IGNORE_INDEX, L.IGNORE_INDEX, 1]])
    assert L.caption_loss(logits, labels_prompt).item() == pytest.approx(math.log(4 / 3), rel=1e-6)


def test_caption_loss_label_smoothing():
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)], [0.0, 0.0]]])
    labels = torch.tensor([[L.IGNORE_INDEX, 0, 1]])
    eps = 0.1
    # smoothed CE = (1 - eps) * CE + eps * mean_k(-log p_k)
    pos0 = math.log(2)
    pos1 = (1 - eps) * math.log(4 / 3) + eps * (math.log(4) + math.log(4 / 3)) / 2
    assert L.caption_loss(logits, labels, eps).item() == pytest.approx((pos0 + pos1) / 2, rel=1e-6)


def test_noise_target_and_x0_by_hand():
    # a_t = 0.36: sqrt(a) = 0.6, sqrt(1 - a) = 0.8; z0 = 1, n = 2.
    z0 = torch.ones(1, 1, 1, 1)
    n = torch.full((1, 1, 1, 1), 2.0)
    a = torch.tensor([0.36])
    zt = L.add_noise(z0, n, a)
    assert zt.item() == pytest.approx(0.6 * 1 + 0.8 * 2)
    assert L.diffusion_target(z0, n, a, "epsilon").item() == pytest.approx(2.0)
    v = L.diffusion_target(z0, n, a, "v_prediction")
    assert v.item() == pytest.approx(0.6 * 2 - 0.8 * 1)
    # A perfect prediction of either kind gives back z0 exactly.
    assert L.predict_x0(zt, n, a, "epsilon").item() == pytest.approx(1.0)
    assert L.predict_x0(zt, v, a, "v_prediction").item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="prediction_type"):
        L.diffusion_target(z0, n, a, "sample")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_noise_and_targets_match_diffusers(prediction_type):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(4, 4, 8, 8, generator=g)
    n = torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    a = sched.alphas_cumprod[t]
    zt = L.add_noise(z0, n, a)
    torch.testing.assert_close(zt, sched.add_noise(z0, n, t))
    if prediction_type == "v_prediction":
        torch.testing.assert_close(L.diffusion_target(z0, n, a, prediction_type), sched.get_velocity(z0, n, t))
    # x0 from the true target recovers z0 (the t = 999 row is ill-conditioned for epsilon: 1/sqrt(a) ~ 15).
    target = L.diffusion_target(z0, n, a, prediction_type)
    torch.testing.assert_close(L.predict_x0(zt, target, a, prediction_type), z0, atol=1e-4, rtol=1e-4)


def test_predict_x0_matches_diffusers_step():
    from diffusers import DDPMScheduler

    for prediction_type in ("epsilon", "v_prediction"):
        sched = DDPMScheduler(prediction_type=prediction_type)
        g = torch.Generator().manual_seed(1)
        zt, pred = torch.randn(1, 4, 4, 4, generator=g), torch.randn(1, 4, 4, 4, generator=g)
        t = 300
        ours = L.predict_x0(zt, pred, sched.alphas_cumprod[[t]], prediction_type)
        sched.config.clip_sample = False
        theirs = sched.step(pred, t, zt).pred_original_sample
        torch.testing.assert_close(ours, theirs)


def test_ddim_step_and_predicted_noise_by_hand():
    # a_t = 0.36 (sqrt 0.6, sqrt(1 - a) 0.8), a_prev = 0.64 (0.8, 0.6); z0 = 1, n = 2, zt = 2.2.
    z0, n = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0)
    a, a_prev = torch.tensor([0.36]), torch.tensor([0.64])
    zt = L.add_noise(z0, n, a)
    v = L.diffusion_target(z0, n, a, "v_prediction")  # 0.6 * 2 - 0.8 * 1 = 0.4
    assert L.predict_noise(zt, v, a, "v_prediction").item() == pytest.approx(2.0)  # 0.6 * 0.4 + 0.8 * 2.2
    assert L.predict_noise(zt, n, a, "epsilon").item() == pytest.approx(2.0)
    # a perfect prediction steps to the same z0 and noise at a_prev: 0.8 * 1 + 0.6 * 2
    for pt, pred in (("epsilon", n), ("v_prediction", v)):
        assert L.ddim_step(zt, pred, a, a_prev, pt).item() == pytest.approx(2.0)
        assert L.ddim_step(zt, pred, a, torch.tensor([1.0]), pt).item() == pytest.approx(1.0)  # the last step
    # a wrong prediction: eps_hat = 1 -> z0_hat = (2.2 - 0.8) / 0.6, stepped: 0.8 z0_hat + 0.6 * 1
    assert L.ddim_step(zt, torch.ones(1, 1, 1, 1), a, a_prev, "epsilon").item() == pytest.approx(
        0.8 * 1.4 / 0.6 + 0.6)


def test_trailing_timesteps_as_diffusers_ddim():
    from diffusers import DDIMScheduler

    assert L.trailing_timesteps(1000, 10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert L.trailing_timesteps(1000, 1) == [999]
    for steps in (1, 4, 7, 50):
        sched = DDIMScheduler(timestep_spacing="trailing")
        sched.set_timesteps(steps)
        assert L.trailing_timesteps(1000, steps) == sched.timesteps.tolist()
    with pytest.raises(ValueError, match="sampling steps"):
        L.trailing_timesteps(1000, 0)


def test_min_snr_weights_by_hand():
    a = torch.tensor([0.5, 0.9])  # snr = 1 and 9
    eps = L.min_snr_weights(a, gamma=5.0, prediction_type="epsilon")
    torch.testing.assert_close(eps, torch.tensor([1.0, 5.0 / 9.0]))
    v = L.min_snr_weights(a, gamma=5.0, prediction_type="v_prediction")
    torch.testing.assert_close(v, torch.tensor([0.5, 0.5]))


def test_generation_loss_weighted_by_hand():
    pred = torch.zeros(2, 1, 1, 2)
    target = torch.tensor([[[[1.0, 1.0]]], [[[2.0, 0.0]]]])  # per-sample mse: 1 and 2
    assert L.generation_loss(pred, target).item() == pytest.approx(1.5)
    w = torch.tensor([1.0, 0.25])
    assert L.generation_loss(pred, target, w).item() == pytest.approx((1 * 1 + 2 * 0.25) / 2)
    # The image cycle is the same denoising loss, on the soft-conditioned prediction.
    assert L.image_cycle_loss(pred, target, w).item() == pytest.approx(0.75)


def test_text_cycle_loss_is_caption_loss_on_generated_image():
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, 1, 2, 3, -100], [-100, -100, 4, 5, 6]])
    assert L.text_cycle_loss(logits, labels, 0.1).item() == pytest.approx(L.caption_loss(logits, labels, 0.1).item())


def test_soft_tokens_temperature_and_gumbel():
    logits = torch.tensor([[[0.0, math.log(2.0), math.log(4.0)]]])
    p = L.soft_tokens(logits, tau=1.0)
    torch.testing.assert_close(p, torch.tensor([[[1 / 7, 2 / 7, 4 / 7]]]))
    p2 = L.soft_tokens(logits, tau=2.0)  # softmax(l / 2) ~ (1, sqrt 2, 2)
    s = 1 + math.sqrt(2) + 2
    torch.testing.assert_close(p2, torch.tensor([[[1 / s, math.sqrt(2) / s, 2 / s]]]))

    torch.manual_seed(0)
    logits = torch.randn(3, 4, 10, requires_grad=True)
    hard = L.soft_tokens(logits, tau=0.5, gumbel=True)
    assert torch.all(hard.sum(-1) == 1) and set(hard.unique().tolist()) == {0.0, 1.0}
    (hard * torch.arange(10.0)).sum().backward()  # straight-through: the relaxed sample's gradient
    assert logits.grad is not None and logits.grad.abs().sum() > 0
