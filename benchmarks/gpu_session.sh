#!/bin/bash
# One call of a lent GPU: the memory model fine-tuned further and two recipes of release 2's tokenizer,
# side by side on the one GPU, then all of it packed into $OUT (at most 16 MiB a file) for the way back.
# (A 15.8 M model from scratch ran here on 2026-12-04 and was of no use in minutes; see docs/results.md.)
#
# Here, first (what travels must stay under 64 MiB; the shipped models and benchmarks/results take 38 MB):
#   maskflow collect env=DMLabMaze-v0 episodes=224 steps=300 workers=2 seed=51 policy=revisit \
#       test_fraction=0.0715 '+env_kwargs.styles=[1]' out=runs/data_rev video=false
#   maskflow tokenize data=runs/data_rev checkpoint=default out=runs/tokens_rev
#   maskflow collect episodes=40 steps=300 seed=61 policy=revisit test_fraction=0.1 out=runs/data_all video=false
#   python -c "from envs.dataset import compact_dataset as c; c('runs/tokens_rev', 'runs/gpu_carry/tokens'); \
#              c('runs/data_all', 'runs/gpu_carry/frames', {'train': 24, 'test': 4})"   # ~13 + ~42 MB, gzip
#   the wheels of vector-quantize-pytorch, einx, loguru, torch-einops-utils, frozendict in .whl/
# The tokenizers train on every maze style (data_all): trained on style 1 alone the last one reached 33.7 dB
# there but 27.8 on fresh mazes of all styles. Recipe A is the last call's; B starts the GAN later and pulls
# the latents harder to the FSQ bins, for steadier token ids (#23's stability goal).
# There (device tool): carry runs/gpu_carry and .whl;  OUT=$OUT MIN=6 bash benchmarks/gpu_session.sh
# Back here: python benchmarks/gpu_train.py --join ... (see docs/results.md, "On a GPU").
# Every setting can be made small to try it on the CPU: PY=.venv/bin/python DEV=cpu MIN=0.5 BS=2 TSIZE=tiny
# TBS=8 RES=5 CAP=200 OUT=/tmp/o bash benchmarks/gpu_session.sh
set -u
PY=${PY:-python3}; MIN=${MIN:-7.3}; DEV=${DEV:-cuda}; CAP=${CAP:-530}; T=${T:-4}
C=${CARRY:-runs/gpu_carry}; W=/tmp/work; rm -rf $W; mkdir -p $W/ft $W/tok $W/tok2
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:.
else
  export PYTHONPATH=.
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L 2>/dev/null; $PY -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
TOK=worldmodel/assets/world_model_memory/tokenizer
timeout $CAP $PY benchmarks/gpu_train.py --data $C/tokens --out $W/ft --init memory --tokenizer $TOK \
  --minutes $MIN --lr ${LR:-4e-4} --batch-size ${BS:-128} --seed 11 --threads $T --device $DEV > $W/ft/log.txt 2>&1 &
P1=$!
tok() {  # a tokenizer recipe into $W/$1: the shared settings, then the recipe's own flags
  local out=$W/$1; shift
  timeout $CAP $PY benchmarks/gpu_tokenizer.py --data $C/frames --out $out --minutes $MIN --size ${TSIZE:-small} \
    --batch-size ${TBS:-128} --lr 8e-4 --eval-reserve-s ${RES:-40} --device $DEV "$@" > $out/log.txt 2>&1
}
tok tok &
P2=$!
tok tok2 --disc-start 0.6 --quant-weight 0.1 --seed 4 &
P3=$!
(while sleep 60; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null; done) &
P4=$!
for p in $P1 $P2 $P3; do wait $p; echo "process $p exit $?"; done
kill $P4 2>/dev/null
for r in ft tok tok2; do echo "== $r"; grep -v "it/s\]" $W/$r/log.txt | tail -6; done
# the three runs' own packs, logs and pictures, as one more pack: the way back takes 8 files at most
$PY -c "
import sys; sys.path.insert(0, 'benchmarks')
from pathlib import Path
from gpu_train import pack
print(pack(Path('$W'), Path('$OUT'), 15.5))
"
ls -la $OUT
