#!/usr/bin/env bash
# The GPU suite in one call on one GPU (an H100 or H200), about 8 minutes; results go to
# benchmarks/results/ (or $1) stamped with the GPU's name, torch, commit, command and date.
#   bash benchmarks/gpu.sh [RESULTS_DIR]
# DRY=1 runs the same steps at toy sizes on any machine (a check that the script works before spending
# GPU time). Without internet, spender must be there as benchmarks/.peers (see benchmarks/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export SPECAE_COMMIT="${SPECAE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
out="${1:-benchmarks/results}"
mkdir -p "$out"
if [ "${DRY:-0}" = 1 ]; then
    dev=cpu; speed="--dry --skip compile"; full="--quick --pixels 300"; sweep="--n-train 200 --pixels 300"
    grow="n-train=100,200"; minutes=0.05; ranks=2
else
    dev=cuda; speed=""; full="--n-train 20000 --n-test 500"; sweep="--n-test 500"
    grow="n-train=1000,10000,100000"; minutes=1; ranks=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
python -c "import torch, specae; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

# 1. speed (~3 min): steps by npix, decoder, batch, fp32/bf16, torch.compile; denoising kernels; spender on the
#    same data and device; epochs streamed from HDF5 against N with GPU busy %; a file denoised end to end
timeout 260 python -m benchmarks.speed --device "$dev" $speed --results-dir "$out" --name speed-gpu || echo "speed: exit $?"
# 2. the decoder choice at equal budgets, against PCA, the oracle and spender (~2.5 min)
timeout 170 python -m benchmarks.quality --set payne $full --minutes "$minutes" --spender-minutes "$minutes" \
    --methods vae-mlp,vae-conv,pca,spender --device "$dev" --results-dir "$out" --name quality-payne-gpu \
    || echo "quality: exit $?"
# 3. quality against the size of the training set (~2 min)
timeout 130 python -m benchmarks.quality --set payne $sweep --sweep "$grow" --minutes 0.4 --methods vae-mlp \
    --device "$dev" --results-dir "$out" --name quality-payne-gpu-sweep-n-train || echo "sweep: exit $?"
# 4. training under torchrun (NCCL on the GPU, gloo for DRY) on the bundled stars; a rank that dies at exit
#    fails the run (~30 s)
timeout 90 python -m torch.distributed.run --standalone --nproc_per_node "$ranks" -m specae.cli train data/stellar.h5 \
    -o "$(mktemp -d)/ddp" --epochs 2 --device "$dev" --distributed --quiet && echo "torchrun: ok" || echo "torchrun: exit $?"
ls -l "$out"
