#!/usr/bin/env bash
# Recipe for the bundled semi-drdnet-tiny weights: the bundled semi-drdnet-lite distilled
# to 3 of its 6 rain blocks and 1 of its 6 detail blocks (derain_cli/distill.py), so that
# a 12-megapixel photo takes under a minute on a 2-core CPU. Fewer rain blocks also
# shorten the tiler's statistics pass. Four rounds: the first prunes and trains with a
# higher learning rate; the second continues from it with fresh crops (--seed 1); the
# third and fourth continue with rdmc-lite as the teacher (then the best bundled model
# on all three evaluation sets; it was itself distilled from semi-drdnet-lite, see
# recipes/rdmc-lite.sh), which took rain100l from 27.81 to 28.74 dB (round 3) and
# heavy-small from 19.24 to 20.29 and 20.56 dB (rounds 3 and 4).
# Distillation sees synthetic rain over clean-bsds (the last 25 photos held out for the
# before/after scores) and the unlabeled real-rain photos; the evaluation sets are only
# scored. Run from the repository root with ../shared/data present.
# On the 2-core AVX2 CPU of 2026-11-30 the time limits stopped round 1 after 242 of its
# 260 steps (1 thread, a second distillation beside it) and round 2 as its log says;
# rounds 3 and 4 ran all 300 steps (14.8 and 13.5 minutes). A faster machine runs every
# step. The shipped round 1 ran as --name r3d1 into another folder and was copied to
# $OUT/round1; rounds 3 and 4 ran into runs/distill-tiny-rdmc/round1 and round2, with
# round 2 as the bundled weights/semi-drdnet-tiny.safetensors of commit a80bfa8. The
# name is only a label in the file's metadata.
# Round 5 (2026-12-01, 2-core AVX-512-BF16 CPU, bf16 autocast) is supervised training on
# the synthesizer's additive rain (the evaluation sets' kind; the four distillation rounds
# saw the older screen-blended rain), light, medium and mixed rain drawn evenly, continued
# from round 4 (the weights bundled at commit fd3e31c) for 25 minutes; rain100l (first 10
# pairs) is only watched, the final weights are the run's last.
# Round 6 (2026-12-02, same CPU) continues round 5's bundled fp16 weights for 20 minutes
# with heavy rain added to the draw (light, medium, heavy, mixed evenly, seed 8, BatchNorm
# statistics kept): heavy-small 21.00 -> 23.82 dB, rain100l 31.39 -> 31.61, sirr-val
# 24.68 -> 24.60 (fp32). Round 7 continues it 20 more minutes the same way (seed 9):
# rain100l 32.01, heavy-small 24.04, sirr-val 24.56 dB (fp32).
# Round 8 (2026-12-06) is a soup of round 7 and two 10-minute runs from it, round 9 the
# same from round 8 (below).
set -euo pipefail
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-runs}
OUT="$RUNS/distill-tiny"
derain distill -m semi-drdnet-lite --detail-blocks 1 --rain-blocks 3 \
  --clean "$DATA/clean-bsds" --real "$DATA/real-rain" --steps 260 --lr 2e-4 \
  --max-minutes 34 --threads 1 --name semi-drdnet-tiny --out "$OUT/round1" --quiet
derain distill -m semi-drdnet-lite --detail-blocks 1 --rain-blocks 3 \
  --init "$OUT/round1/model.safetensors" \
  --clean "$DATA/clean-bsds" --real "$DATA/real-rain" --steps 200 --lr 1e-4 --seed 1 \
  --max-minutes 25 --threads 2 --name semi-drdnet-tiny --out "$OUT/round2" --quiet
derain distill -m rdmc-lite --student semi-drdnet-tiny \
  --init "$OUT/round2/model.safetensors" \
  --clean "$DATA/clean-bsds" --real "$DATA/real-rain" --steps 300 --lr 1e-4 --seed 2 \
  --max-minutes 35 --threads 2 --name semi-drdnet-tiny --out "$OUT/round3" --quiet
derain distill -m rdmc-lite --student semi-drdnet-tiny \
  --init "$OUT/round3/model.safetensors" \
  --clean "$DATA/clean-bsds" --real "$DATA/real-rain" --steps 300 --lr 1e-4 --seed 3 \
  --max-minutes 20 --threads 2 --name semi-drdnet-tiny --out "$OUT/round4" --quiet
NOTE_HEAD="Interim: semi-drdnet-lite distilled to 3 rain + 1 detail blocks (rounds 1 and 2, \
242 + 200 steps), distilled from rdmc-lite (rounds 3 and 4, 300 steps each), then trained \
on additive synthetic rain over clean-bsds (round 5: light, medium and mixed rain drawn \
evenly, 25 minutes"
NOTE_TAIL="All CPU-trained; replace when GPU-trained weights exist."
BATCHNORM=refresh bash recipes/additive-stage.sh semi-drdnet-tiny "$OUT/round4/model.safetensors" "$OUT/round5" \
  1500 "round 4 of recipes/semi-drdnet-tiny.sh (the weights bundled at commit fd3e31c, sha256 \
b1971c8993e4c958d15c16c66bd50a167cb2416bcacfd58850d0a5af4473bef2)" \
  "$NOTE_HEAD, lr 1e-4, no contrastive terms). steps, wall_time_s and hardware are round 5's. \
$NOTE_TAIL"
# Round 6 starts from round 5's bundle (fp16), as it ran.
PRESET=light,medium,heavy,mixed SEED=8 bash recipes/additive-stage.sh semi-drdnet-tiny \
  weights/semi-drdnet-tiny.safetensors "$OUT/round6" 1200 "round 5 of \
recipes/semi-drdnet-tiny.sh, as bundled (fp16) at commit 6ff8450, sha256 \
ba1907fd11737de1a23d6d95f2a2be5bcac0996a15b771bb38820d25b8ba1174" \
  "$NOTE_HEAD; round 6: light, medium, heavy and mixed drawn evenly, 20 minutes; lr 1e-4, no \
contrastive terms). steps, wall_time_s and hardware are round 6's. $NOTE_TAIL"
# Round 7: round 6 continued the same way for 20 more minutes (seed 9).
HISTORY_R7="$NOTE_HEAD; rounds 6 and 7: light, medium, heavy and mixed drawn evenly, 20 \
minutes each; lr 1e-4, no contrastive terms)."
PRESET=light,medium,heavy,mixed SEED=9 bash recipes/additive-stage.sh semi-drdnet-tiny \
  weights/semi-drdnet-tiny.safetensors "$OUT/round7" 1200 "round 6 of \
recipes/semi-drdnet-tiny.sh, as bundled (fp16) at commit fd2e8dc, sha256 \
0ddd660ca1ae50b31b2588aba164d74187914ede688f9ae5d79a4e04b273b829" \
  "$HISTORY_R7 steps, wall_time_s and hardware are round 7's. $NOTE_TAIL"
# (round 7's int8 graph was made here; round 9's, below, replaced it: 8 convolutions kept
# in fp32, the script's default, since round 7; with round 6's 4, rain100l lost 0.14 dB)
# Round 8 (2026-12-06, the 2-core AMD EPYC with AVX-512-BF16, bf16 autocast): tiny's first
# soup, semi-drdnet-lite's stage 12 recipe (recipes/soup-stage.sh with the background
# contrastive term alone and the PSNR term, --psnr-weight 0.005): two 10-minute runs from
# round 7's bundle (added rain; the same draw with veiled rain in one of nine; seed 5), then
# round 7 and the two with equal shares, named before either run was trained with the rule
# "no Y-PSNR loss against round 7 on any set": rain100l 32.01 -> 32.06, heavy-small 24.04 ->
# 24.08, sirr-val 24.56 -> 24.68 (fp32). There the runs took 1146 and 1191 steps.
cp weights/semi-drdnet-tiny.safetensors "$OUT/round7.safetensors"
NOTE_R8="$HISTORY_R7 Round 8: round 7 averaged with equal shares with two \
10-minute runs from it with the background contrastive term alone (self features) and a PSNR \
term (--psnr-weight 0.005): added rain, and that draw with veiled rain in 1 of 9; seed 5. \
steps and wall_time_s are the sums of round 8's runs' (each member is listed under soup). \
$NOTE_TAIL"
bash recipes/soup-stage.sh semi-drdnet-tiny "$OUT/round7.safetensors" "$OUT/round8" \
  "--contrast-features self --contrast-terms bg --psnr-weight 0.005" "synthetic rain \
(light,medium,heavy,mixed; one run of round 8 also veiled, 1 draw in 9) on clean-bsds" \
  "round 7 of recipes/semi-drdnet-tiny.sh, as bundled (fp16) at commit 774f3fb, sha256 \
bfb1f39301dc5007766c98cb03b27afbced92d18ca78cdce158cf7cb24c8dcb6" "$NOTE_R8"
# Round 9 (2026-12-06, the same CPU): round 8's procedure once more from round 8's bundle,
# seed 6, named before either run was trained with the rule "no Y-PSNR loss against round
# 8 on any set": rain100l 32.056 -> 32.065, heavy-small 24.08 -> 24.11, sirr-val
# 24.68 -> 24.72 (fp32). There the runs took 1029 and 1001 steps (round 8's int8 graph,
# bundled in between, was replaced by round 9's at the end).
cp weights/semi-drdnet-tiny.safetensors "$OUT/round8.safetensors"
NOTE_R9="${NOTE_R8%% steps and wall_time_s*} Round 9: the same from round 8, seed 6. steps \
and wall_time_s are the sums of round 9's runs' (each member is listed under soup). \
$NOTE_TAIL"
SEED=6 bash recipes/soup-stage.sh semi-drdnet-tiny "$OUT/round8.safetensors" "$OUT/round9" \
  "--contrast-features self --contrast-terms bg --psnr-weight 0.005" "synthetic rain \
(light,medium,heavy,mixed; one run of each of rounds 8 and 9 also veiled, 1 draw in 9) on \
clean-bsds" "round 8 of recipes/semi-drdnet-tiny.sh, as bundled (fp16) at commit c4c6245, \
sha256 8dc911c5390325fbbbd28cdc495f977b1c30567e42cd4f959ae9dc64b3985013" "$NOTE_R9"
# The int8 graph belongs to these exact weights.
NAME=semi-drdnet-tiny bash recipes/semi-drdnet-lite-int8.sh
