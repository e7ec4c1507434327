#!/usr/bin/env bash
# The GPU check in one call: every GPU number docs/performance.md reports, measured in one run on a lent device machine.
#
# Here (once):   bash benchmarks/device_check.sh --prepare
#                  converts the notebook to .devdata/fashion_mnist_interpretability.py and copies the dataset's
#                  four .gz files into .devdata/ (git-ignored; carry it to the device)
# There:         bash benchmarks/device_check.sh          (from the repository root; results under $OUT)
#
# Phases, each under its own time limit, in order of importance (a phase that fails does not stop the next;
# PHASES="graphs scratch" runs only those):
#   startup  seconds of imports, CUDA start-up and a first against a second small training in one process
#   graphs   benchmarks/cuda_graph_training.py: eager against CUDA-graph training, default recipe
#   scratch  the notebook as a script, no checkpoint: Run All from scratch (checkpoints go to a new temporary
#            folder, $DEVICE_CHECK_CHECKPOINTS unless set)
#   cached   the same again: Run All with the checkpoint that scratch wrote
#   budget   benchmarks/fvu_vs_budget.py: validation and test FVU against autoencoder epochs 30, 60, 75, 120
#   sweep    benchmarks/k_sweep.py: k = 5 ... 200 at default epochs
#   controls benchmarks/controls.py: every control model trained on the GPU, seeds +1 and +2 for the stability
#            study too (--train-sae, into the scratch phase's checkpoint folder)
#   shortcut benchmarks/shortcut.py: the planted-shortcut study, every model trained on the GPU (into the scratch
#            phase's checkpoint folder: the default pairs of seeds 1 and 2 too), scored; no pages
#   profile  the cached run once more under cProfile (-X importtime too): $OUT/profile.txt, $OUT/importtime.txt
#   variants benchmarks/variants.py: every autoencoder kind's frontier, recurrence and planted dictionary, trained
#            on the GPU into the scratch phase's checkpoint folder (not in the default list: PHASES=variants; a
#            phase stopped by its limit resumes from the models it saved when run again)
# The script prints "cell N: T s" (seconds since the interpreter started) as each notebook cell begins.
# Bytecode: the lent machines' torch install has no usable compiled bytecode and a read-only folder, so every
# process compiled torch's sources again (4.7 s of compile() in a first training alone, more in the imports).
# pip compiles bytecode when it installs, so before the phases Python gets a writable bytecode cache
# ($PYTHONPYCACHEPREFIX) filled once by importing what the notebook imports, as an install would have left it
# (seconds in phases.txt as "bytecode"); BYTECODE=0 skips this and measures the bare install.
# Seconds per phase go to $OUT/phases.txt, all output to $OUT/log.txt, JSON results beside them.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${1:-}" = --prepare ]; then
  mkdir -p .devdata
  .venv/bin/jupyter nbconvert --to script fashion_mnist_interpretability.ipynb --output-dir .devdata --log-level WARN
  # a timestamp as each cell begins: seconds since its phase launched the interpreter (imports included);
  # checkpoints in $DEVICE_CHECK_CHECKPOINTS
  python3 - .devdata/fashion_mnist_interpretability.py <<'PY'
import re, sys
path = sys.argv[1]
stamp = r'print("cell \1:", round(__import__("time").time() - float(__import__("os").environ.get("PHASE_START", "nan")), 1), "s", flush=True)'
with open(path) as f:
    text = re.sub(r"^# In\[(\d+)\]:$", stamp, f.read(), flags=re.M)
folder = 'CHECKPOINT_DIR = __import__("os").environ.get("DEVICE_CHECK_CHECKPOINTS", "checkpoints")'
text, n = re.subn(r'^CHECKPOINT_DIR = "checkpoints"', folder, text, flags=re.M)
assert n == 1, "the notebook's CHECKPOINT_DIR line changed: update device_check.sh"
with open(path, "w") as f:
    f.write(text)
PY
  src=data/FashionMNIST/raw
  [ -f $src/train-images-idx3-ubyte.gz ] || src=/usr/share/datasets/fashion-mnist
  cp "$src"/*-ubyte.gz .devdata/
  ls -la .devdata
  exit 0
fi
export OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT" data/FashionMNIST/raw
cp .devdata/*-ubyte.gz data/FashionMNIST/raw/
export PYTHONUNBUFFERED=1 PYTHONPATH=.

PHASES=${PHASES:-startup graphs scratch cached budget sweep controls shortcut}
phase() {  # phase NAME LIMIT_SECONDS COMMAND...: timed, if PHASES names it
  [[ " $PHASES " == *" $1 "* ]] || return 1
  timed "$@"
}
timed() {  # timed NAME LIMIT_SECONDS COMMAND...: run, log, and record its wall seconds and exit status
  local name=$1 limit=$2 start=$EPOCHREALTIME rc
  shift 2
  export PHASE_START=$EPOCHREALTIME
  echo "== $name: $*" >>"$OUT/log.txt"
  timeout "$limit" "$@" >>"$OUT/log.txt" 2>&1
  rc=$?
  awk -v n="$name" -v r="$rc" -v s="$start" -v e="$EPOCHREALTIME" \
    'BEGIN {printf "%-8s rc=%d  %.1f s\n", n, r, e - s}' | tee -a "$OUT/phases.txt"
  return $rc
}

export DEVICE_CHECK_CHECKPOINTS=${DEVICE_CHECK_CHECKPOINTS:-$(mktemp -d)}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/phases.txt"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/phases.txt"
if [ "${BYTECODE:-1}" = 1 ]; then
  export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-/tmp/device_check_pycache}
  echo "bytecode: PYTHONDONTWRITEBYTECODE was '${PYTHONDONTWRITEBYTECODE:-}'; cache in $PYTHONPYCACHEPREFIX" \
    | tee -a "$OUT/phases.txt"
  unset PYTHONDONTWRITEBYTECODE
  timed bytecode 180 $PY -c \
    "import torch, torch._dynamo, matplotlib.pyplot, seaborn, scipy.stats, tqdm, ksae_helpers"
fi
phase startup 60 $PY -c '
import time; t0 = time.perf_counter()
import torch, ksae_helpers as kh; t1 = time.perf_counter()
torch.zeros(1, device="cuda"); torch.cuda.synchronize(); t2 = time.perf_counter()
data = kh.load_fashion_mnist("data", verbose=False); t3 = time.perf_counter()
print(f"startup: imports {t1 - t0:.1f} s, CUDA context {t2 - t1:.1f} s, data {t3 - t2:.1f} s")
import cProfile, os, pstats
for run in ("first", "second"):
    t = time.perf_counter()
    with cProfile.Profile() as prof:  # where the first training of a process spends its one-off start-up
        history = kh.train_models(kh.Config(train_subset=5120, ae_epochs=2, clf_epochs=2), data, torch.device("cuda"))[2]
    ae = history["seconds"]["ae"]
    print(f"startup: {run} small training {time.perf_counter() - t:.1f} s (autoencoder {ae:.1f} s)")
    if run == "first":
        with open(os.path.join(os.environ["OUT"], "startup_profile.txt"), "w") as fh:
            pstats.Stats(prof, stream=fh).sort_stats("cumulative").print_stats(60)
'
phase graphs 170 $PY benchmarks/cuda_graph_training.py --device cuda --out "$OUT/cuda_graph_training.json"
phase scratch 130 $PY .devdata/fashion_mnist_interpretability.py && cp results/summary.json "$OUT/summary_scratch.json"
phase cached 90 $PY .devdata/fashion_mnist_interpretability.py && cp results/summary.json "$OUT/summary_cached.json"
phase budget 100 $PY benchmarks/fvu_vs_budget.py --epochs 30 60 75 120 --device cuda --out "$OUT/fvu_vs_budget.json"
phase sweep 100 $PY benchmarks/k_sweep.py --device cuda --out "$OUT/k_sweep.json"
phase controls 300 $PY benchmarks/controls.py --device cuda --train-sae --ckpt-dir "$DEVICE_CHECK_CHECKPOINTS" \
  --out "$OUT/controls.json"
phase shortcut 600 $PY benchmarks/shortcut.py --device cuda --ckpt-dir "$DEVICE_CHECK_CHECKPOINTS" \
  --out "$OUT/shortcut.json"
if phase profile 150 $PY -X importtime -m cProfile -o "$OUT/profile.out" .devdata/fashion_mnist_interpretability.py; then
  $PY -c "import pstats, sys; pstats.Stats(sys.argv[1], stream=open(sys.argv[2], 'w')).sort_stats('cumulative').print_stats(120)" \
    "$OUT/profile.out" "$OUT/profile.txt"
  grep "^import time:" "$OUT/log.txt" | sort -t'|' -k2 -n | tail -60 >"$OUT/importtime.txt"
  sed -i '/^import time:/d' "$OUT/log.txt"
fi
phase variants 540 $PY benchmarks/variants.py --device cuda --ckpt-dir "$DEVICE_CHECK_CHECKPOINTS" \
  --out "$OUT/variants.json"
grep -E "^cell [0-9]+:|^startup:|^ *(eager|graphs):|ae_speedup|clf_speedup|difference|^ *[0-9]+ +[0-9]+ +256" "$OUT/log.txt"
cat "$OUT/phases.txt"
