#!/bin/bash
# Train specae on a survey's HDF5 files with every GPU of several nodes (DDP through torchrun).
# Submit with: sbatch examples/slurm.sh            (adjust the #SBATCH lines to your cluster)
#SBATCH --job-name=specae-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one torchrun per node; it starts one process per GPU
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32           # DataLoader workers read the HDF5 row blocks
#SBATCH --time=12:00:00
#SBATCH --signal=TERM@300            # 5 minutes' warning: the last epoch's state is on disk; resubmit to resume
set -euo pipefail

head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
model=${MODEL:-runs/sdss-vae}
resume=$([ -f "$model/train_state.pt" ] && echo --resume || true)   # a requeued job continues where it stopped

srun torchrun \
    --nnodes "$SLURM_NNODES" --nproc_per_node "$SLURM_GPUS_PER_NODE" \
    --rdzv_backend c10d --rdzv_endpoint "$head_node:29500" --rdzv_id "$SLURM_JOB_ID" \
    -m specae.cli train 'survey/*.h5' -o "$model" --distributed --device cuda --precision bf16 \
    --batch-size 4096 --workers 8 --max-minutes 700 --quiet $resume
