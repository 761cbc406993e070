#!/usr/bin/env bash
# Second GPU call (2026-11-26): CUDA-graph parity against two eager runs, and the end-to-end
# epoch throughput of `magsd train` with and without the graph. Carry [".device"].
source "$(dirname "$0")/gpu-env.sh"
b=.device/magsd; o=$OUT
$b bench --device cuda --only graph-parity > $o/parity.jsonl 2>$o/err.txt
$b bench --device cuda --only graph-parity --bf16 --channels-last >> $o/parity.jsonl 2>>$o/err.txt
for g in false true; do
 $b train --data .device/cxr --classes covid19,viral,bacterial,normal --folds 0 --epochs 2 --bf16 --channels-last --set performance.cuda_graph=$g --out $o/t-$g --quiet >>$o/err.txt 2>&1
 grep '"epoch"' $o/t-$g/train.jsonl | $py -c "import sys,json; [print('$g', r['epoch'], round(r['images_per_s'],1), round(r['train_loss'],4)) for r in map(json.loads, sys.stdin)]"
 rm -rf $o/t-$g
done
$py scripts/bench-table.py /dev/null $o/parity.jsonl
echo deprecated_warnings $(grep -c deprecated $o/err.txt)
