#!/usr/bin/env bash
# Issue 13's zoo floor: each zoo model's full training (the README's command) against its numpy
# reference (examples/reference/*_numpy.py), back to back, wall time of the whole process.
#   bash bench/zoo_vs_numpy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
D=examples/data/digits.npz
run() {  # name, flowml command, numpy command
    local t0 t1 t2
    t0=$(date +%s.%N); eval "$2" > /dev/null 2>&1; t1=$(date +%s.%N); eval "$3" > /dev/null 2>&1; t2=$(date +%s.%N)
    python3 -c "import sys; a, b = float(sys.argv[2]), float(sys.argv[3]); print(f'| {sys.argv[1]} | {a:.2f} s | {b:.2f} s | {a / b:.2f}x |')" \
        "$1" "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)"
}
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| model | flowml | numpy reference | ratio |"
echo "|---|---:|---:|---:|"
run dae "python examples/train_unsupervised.py dae" "python examples/reference/dae_numpy.py"
run rbm-cd1 "python examples/train_unsupervised.py rbm --fn train_cd" "python examples/reference/rbm_numpy.py"
run rbm-pcd15 "python examples/train_unsupervised.py rbm --fn train_pcd" "python examples/reference/rbm_numpy.py --method pcd --k 15"
run sda "flowml train examples/sda.flow --data $D --split 1200 --phases pretrain1:50,pretrain2:50,finetune:100 --batch 1" "python examples/reference/sda_numpy.py"
run dbn "flowml train examples/dbn.flow --data $D --split 1200 --phases pretrain1:100,pretrain2:100,finetune:200 --batch 10" "python examples/reference/dbn_numpy.py"
run lenet "flowml train examples/lenet.flow --data $D --split 1200 --batch 20 --epochs 200" "python examples/reference/lenet_numpy.py"
