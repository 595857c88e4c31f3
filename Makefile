# Every target does its own set-up on a fresh machine: a .venv with the CPU build of torch
# from local disk first (an unpinned torch would pull a multi-GB CUDA build), then the project.
PY       ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
TORCH    ?= torch==2.13.0
# the stamp names the torch asked for too, so another TORCH is installed (pip keeps an installed torch that
# satisfies it: a CUDA build goes into a VENV of its own)
STAMP    := $(VENV)/.installed-$(shell (cat pyproject.toml; echo "$(TORCH)") | sha1sum | cut -c1-12)
OUT      ?= out
N        ?= 600
SEED     ?= 0

# A second environment for the real Qwen2-VL / Qwen2.5-VL / SmolVLM processors, which need torchvision:
# PyPI's torchvision does not run beside the CPU torch above, so it gets torch + torchvision builds that go
# together (on x86_64 a CUDA build, about 5.5 GB, that runs on the CPU; on aarch64 a CPU build).
PROC_VENV  ?= .venv-processors
PROC_BIN   := $(PROC_VENV)/bin
PROC_TORCH ?= $(if $(filter aarch64,$(shell uname -m)),torch==2.9.1 torchvision==0.24.1,torch==2.14.1 torchvision==0.29.1)
PROC_STAMP := $(PROC_VENV)/.installed-$(shell (cat pyproject.toml; echo "$(PROC_TORCH)") | sha1sum | cut -c1-12)

.PHONY: install install-processors lint test test-processors demo bench bench-budget bench-cost bench-cost-fast bench-cost-ablation bench-loop bench-policy bench-grid bench-robust bench-ablation bench-anchor bench-pipeline bench-scale bench-reads bench-endpoint bench-gpu bench-train-speed bench-train-speed-code bench-draw scaling train train-open clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

$(PROC_STAMP): pyproject.toml
	test -x $(PROC_BIN)/python || $(PY) -m venv $(PROC_VENV)
	$(PROC_BIN)/python -m pip install -q --upgrade pip
	$(PROC_BIN)/python -m pip install -q $(PROC_TORCH)
	$(PROC_BIN)/python -m pip install -q -e ".[test-processors]"
	rm -f $(PROC_VENV)/.installed-*
	touch $(PROC_STAMP)

install-processors: $(PROC_STAMP)

# the report's browser test needs Debian's chromium: installed here only if absent, and never required
# (without it that one test is skipped). Then the real processors' tests in their own environment
# (test-processors: about 3 min from nothing, a few seconds once its environment exists).
# The 25 slowest tests are listed: CI gives the whole command 90 minutes.
test: $(STAMP)
	$(BIN)/python -m ruff check spote pipelines cluster benchmarks training research tests
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
	  || echo "chromium could not be installed: the report's browser test will be skipped"
	$(BIN)/python -m pytest -q --durations=25 tests
	$(MAKE) --no-print-directory test-processors

# the real processors' tests alone, in their own environment (skipped in the one above)
test-processors: $(PROC_STAMP)
	$(PROC_BIN)/python -m pytest -q tests/adapters/test_processors.py

demo: $(STAMP)
	$(BIN)/python -m pipelines.vqa --input pipelines/samples/vqa/manifest.jsonl --output $(OUT)/demo
	@echo "results: $(OUT)/demo (Parquet), report: $(OUT)/demo/_runs/*/report.html"

# every method on the same N items; grid evaluates every window (560-3,300 per item), so this takes hours on 2 cores
bench: $(STAMP)
	$(BIN)/spote bench --split test --n $(N) --seed $(SEED) --methods baseline,oracle,grid,vicrop,api,naive_entropy,random,spote \
	  --out results/bench-test-seed$(SEED).json

# every method a PolicyConfig change can move (spote, naive_entropy, random on spote's passes) and the
# cheap peers, without grid (6 min on 2 cores at the defaults of 3a6b6d2; grid reads only mode, min_window and
# scale_step): after a policy change
bench-policy: $(STAMP)
	$(BIN)/spote bench --split test --n $(N) --seed $(SEED) --methods baseline,oracle,vicrop,api,naive_entropy,random,spote \
	  --out results/bench-policy-test-seed$(SEED).json

# grid alone on a seed (~85 min here, one core): with bench-policy, every method of make bench on that seed
bench-grid: $(STAMP)
	$(BIN)/spote bench --split test --n $(N) --seed $(SEED) --methods baseline,grid \
	  --out results/bench-grid-test-seed$(SEED).json

# robustness (--corrupt) and a fresh seed, on the methods the targets compare
bench-robust: $(STAMP)
	for c in noise blur jpeg; do \
	  $(BIN)/spote bench --split test --n $(N) --seed $(SEED) --corrupt $$c --methods baseline,spote \
	    --out results/bench-test-seed$(SEED)-$$c.json || exit 1; done
	$(BIN)/spote bench --split test --n $(N) --seed 1 --methods baseline,oracle,naive_entropy,spote \
	  --out results/bench-test-seed1.json

# the choices behind PolicyConfig's defaults, on the val split (not test): each changes one setting
bench-ablation: $(STAMP)
	$(BIN)/spote bench --split val --n 280 --methods baseline,oracle,naive_entropy,spote --no-plot --out results/ablation-val-default.json
	$(BIN)/spote bench --split val --n 280 --methods spote --mode zoom --no-plot --out results/ablation-val-mode-zoom.json
	$(BIN)/spote bench --split val --n 280 --methods spote --no-plot --policy '{"anchor_min_prob": 0.5}' --out results/ablation-val-anchor-0.5.json
	$(BIN)/spote bench --split val --n 280 --methods spote --no-plot --policy '{"min_window": 1.5}' --out results/ablation-val-min-window-1.5.json
	$(BIN)/spote bench --split val --n 280 --methods spote --no-plot --policy '{"saliency_peaks": 0}' --out results/ablation-val-no-peak-windows.json
	$(BIN)/spote bench --split val --n 280 --methods spote --no-plot --policy '{"group_size": 8, "steps": 6, "budget": 64, "plateau_patience": 3}' --out results/ablation-val-g8-t6-b64.json
	$(BIN)/spote bench --split val --n 280 --methods spote --no-plot --policy '{"group_size": 16, "steps": 6, "budget": 128, "plateau_patience": 3}' --out results/ablation-val-g16-t6-b128.json
	$(BIN)/spote bench --split val --n 280 --methods spote --no-plot --policy '{"group_size": 8, "steps": 24, "budget": 256, "plateau_patience": 6}' --out results/ablation-val-g8-t24-b256.json

# the anchor term where the loop cannot avoid collapse: the paper's scaffold loop (2 steps x 4 spotlights,
# no early exit, no coarse probe) in each rendering; docs/design.md, "The anchor term"
NO_EXIT    = "exit_entropy_per_ln_k": 0.0, "exit_entropy": 0.0, "glance_side": 0.0, "probe_side": 0.0, "plateau_patience": 99
PAPER_LOOP = '{$(NO_EXIT), "group_size": 4, "steps": 2}'
bench-anchor: $(STAMP)
	for m in zoom zoom+context highlight; do \
	  $(BIN)/spote bench --split test --n $(N) --seed $(SEED) --mode $$m --methods baseline,naive_entropy,spote --no-plot \
	    --policy $(PAPER_LOOP) --out results/anchor-paper-loop-$$m-seed$(SEED).json || exit 1; done
	for s in 1 2; do \
	  $(BIN)/spote bench --split test --n $(N) --seed $$s --mode zoom --methods baseline,naive_entropy,spote --no-plot \
	    --policy $(PAPER_LOOP) --out results/anchor-paper-loop-zoom-seed$$s.json || exit 1; done
	$(BIN)/spote bench --split test --n $(N) --seed $(SEED) --mode zoom --methods naive_entropy,spote --no-plot \
	  --policy '{$(NO_EXIT), "group_size": 8, "steps": 4}' \
	  --out results/anchor-no-exit-g8-t4-zoom-seed$(SEED).json

# the cost frontier: every search method (spote, naive_entropy, random, grid coarse-to-fine, zoomeye, scaffold)
# at forward-pass budgets 8/16/32/64 and at its defaults (grid: budgets only), same items; JSON + accuracy-vs-passes
# plot. Two budgets at a time, one core each (~35 min on 2 cores)
BUDGET_N ?= 300
bench-budget: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m spote.bench.sweep --split test --n $(BUDGET_N) --seed $(SEED) --budgets 8,16,32,64 \
	  --jobs 2 --out results/bench-budget-test-seed$(SEED).json

# spote's cost at its defaults on the four test seeds (n=600), beside the whole image (~6 min a seed)
bench-cost: $(STAMP)
	for s in 0 1 2 3; do \
	  $(BIN)/spote bench --split test --n $(N) --seed $$s --methods baseline,spote --no-plot \
	    --out results/bench-cost-test-seed$$s.json || exit 1; done

# the first group and stop before the saliency peaks were read first and the settle stop (commit c0b2315)
PRIOR_FIRST_GROUP = "peaks_first": false, "saliency_size": 256, "settle_after": 0
# the fast point of that time (~20 passes per item; docs/benchmark.md "Cost at the defaults")
FAST = '{"first_group": 24, "group_size": 12, "budget": 48, "plateau_patience": 2, $(PRIOR_FIRST_GROUP)}'
bench-cost-fast: $(STAMP)
	for s in 0 1 2 3; do \
	  $(BIN)/spote bench --split test --n $(N) --seed $$s --methods baseline,spote --no-plot --policy $(FAST) \
	    --out results/bench-cost-fast-test-seed$$s.json || exit 1; done

# what each cost change bought, on val (docs/design.md "Why these stopping and group settings"): each line
# one PolicyConfig, relative to the defaults; ~2 min each on one core, the previous defaults ~4 min
PREVIOUS = "group_size": 16, "first_group": 0, "read_chunk": 0, "greedy_steps": 0, "budget": 256, "plateau_patience": 5, $(PRIOR_FIRST_GROUP)
COST_ABLATION = \
  previous-defaults='{$(PREVIOUS)}' \
  read-chunk-4='{$(PREVIOUS), "read_chunk": 4}' \
  greedy-first-16='{$(PREVIOUS), "read_chunk": 4, "greedy_steps": 1}' \
  greedy-every-step='{$(PREVIOUS), "read_chunk": 4, "greedy_steps": 12}' \
  b96-no-relevance='{$(PREVIOUS), "read_chunk": 4, "greedy_steps": 1, "budget": 96, "use_relevance": false}' \
  b96-no-glance='{$(PREVIOUS), "read_chunk": 4, "greedy_steps": 1, "budget": 96, "glance_side": 0.0}' \
  greedy-first-16-b64-p3='{$(PREVIOUS), "read_chunk": 4, "greedy_steps": 1, "budget": 64, "plateau_patience": 3}' \
  sampled-first-16-g8-b48-p3='{$(PREVIOUS), "read_chunk": 4, "group_size": 8, "first_group": 16, "budget": 48, "plateau_patience": 3}' \
  greedy-first-16-g8-b48-p3='{$(PREVIOUS), "read_chunk": 4, "greedy_steps": 1, "group_size": 8, "first_group": 16, "budget": 48, "plateau_patience": 3}' \
  greedy-first-24-b64-p3='{$(PREVIOUS), "read_chunk": 4, "greedy_steps": 1, "first_group": 24, "budget": 64, "plateau_patience": 3}' \
  greedy-first-24-b64-p2='{"first_group": 24, "budget": 64, "plateau_patience": 2, $(PRIOR_FIRST_GROUP)}' \
  fast=$(FAST) \
  before-settle='{$(PRIOR_FIRST_GROUP)}' \
  peaks-first-256='{"saliency_size": 256, "settle_after": 0}' \
  peaks-first='{"settle_after": 0}' \
  peaks-first-256-settle='{"saliency_size": 256}' \
  settle-only='{"peaks_first": false, "saliency_size": 256}' \
  defaults='{}'
bench-cost-ablation: $(STAMP)
	for cfg in $(COST_ABLATION); do name=$${cfg%%=*}; pol=$${cfg#*=}; \
	  OMP_NUM_THREADS=1 $(BIN)/spote bench --split val --n 300 --seed $(SEED) --methods spote --no-plot --policy "$$pol" \
	    --out results/cost-ablation-val-seed$(SEED)-$$name.json || exit 1; done

# is the loop model-bound? its passes/s against the model's raw batched passes/s, same machine, interleaved
bench-loop: $(STAMP)
	OMP_NUM_THREADS=2 $(BIN)/python -m benchmarks.loop_efficiency --n 90 --rounds 3 --out results/loop-efficiency.json

bench-pipeline: $(STAMP)
	$(BIN)/python -m benchmarks.pipeline_throughput --n 600 --out results/bench-pipeline.json

# archive scale: driver memory and planning time at 10k and 200k manifest rows (most rows skip the model;
# 200 go through it at {"budget": 1}); each size in its own driver process. ~10-20 min on 2 cores
bench-scale: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m benchmarks.scale --sizes 10000,200000 --out results/bench-scale.json

# a job's own Parquet reads and id group-bys: Ray Data's default reader and partitions against the jobs' (~5 min)
bench-reads: $(STAMP)
	$(BIN)/python -m benchmarks.reads --rows 20000,200000 --rounds 3 --out results/bench-reads.json

# SPOT-E in-process vs the same model behind an OpenAI-compatible endpoint (the test fixture server), same 50 items
bench-endpoint: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m benchmarks.endpoint --n 50 --out results/bench-endpoint.json

# GPU rows of docs/benchmark.md (SpotBench bf16 + fp32, pipeline bench on one GPU); in an environment of its own with a CUDA
# torch (pip keeps a CPU torch already installed in .venv): make bench-gpu VENV=.venv-gpu TORCH=torch
bench-gpu: $(STAMP)
	PY=$(BIN)/python bash benchmarks/gpu_bench.sh results/gpu 600 300

# training wall time: libgomp's spinning threads against GOMP_SPINCOUNT=0 (TRAIN_ENV), short train-open runs, same weights (~12 min)
bench-train-speed: $(STAMP)
	$(BIN)/python -m benchmarks.training_speed --steps 75 --rounds 2 --out results/training-speed.json

# training wall time: the training code of f5e540a (scenes drawn the plain way) against this checkout's, both with TRAIN_ENV,
# short train-open runs, same weights (~10 min on 2 cores; AGAINST=REV for another commit)
AGAINST ?= f5e540a
bench-train-speed-code: $(STAMP)
	$(BIN)/python -m benchmarks.training_speed --against $(AGAINST) --steps 40 --rounds 2 --out results/training-speed-code.json

# drawing SpotBench scenes the plain way against the fast one (same pixels), and train-open's batches on one thread (~2 min)
bench-draw: $(STAMP)
	$(BIN)/python -m benchmarks.drawing_speed --pages 100 --batches 20 --out results/drawing-speed.json

scaling: $(STAMP)
	$(BIN)/python -m benchmarks.scaling --out results/scaling.json

# The shipped weights (spote/weights/spote-tiny/MODEL_CARD.md) are three training runs. `make train`: the recipe
# (stage 1 4200 steps, stage 2 1300; ~65-105 min on 2 cores), then stage 1 continued for 2000 steps on fresh scenes
# and stage 2 again (~61 min; both timed before TRAIN_ENV): the closed-set model, $(OUT)/spote-tiny. `make train-open`: that model extended to
# open items (codes in document fields; docs/experiments/open-items-training.md, the twelfth run): its tower deepened
# to 6 layers (the new ones starting as the identity) and continued for 2200 stage-1 steps on code glyphs with the
# closed views' tokens held to its own, then its language model for 2600 stage-2 steps, half of them open items
# (45.5 min on the 2 cores of 2026-12-06; 69.6 on those of 2026-12-04, where it took 82.7 before TRAIN_ENV): $(OUT)/spote-tiny-open, the same bits as what
# spote/weights/spote-tiny holds. BASE is the closed-set model it starts from; without `make train`, the one shipped
# until 2026-12-02: mkdir -p out/spote-tiny && git archive e53c2ca spote/weights/spote-tiny | tar -x --strip-components=3 -C out/spote-tiny
BASE ?= $(OUT)/spote-tiny
# OpenMP threads that wait for work sleep at once instead of spinning, so the data worker gets a core when the
# training threads idle: train-open's weights the same to the bit, 16% less wall time on 2 cores (82.7 -> 69.6 min;
# docs/experiments/training-speed.md, make bench-train-speed)
TRAIN_ENV = GOMP_SPINCOUNT=0
train: $(STAMP)
	$(TRAIN_ENV) $(BIN)/python -m training.train --out $(OUT)/spote-tiny-recipe --seed 0
	$(TRAIN_ENV) $(BIN)/python -m training.train --tower-from $(OUT)/spote-tiny-recipe --vision-steps 2000 --vision-lr 1e-3 --seed 0 \
	  --out $(OUT)/spote-tiny

train-open: $(STAMP)
	$(TRAIN_ENV) $(BIN)/python -m training.train --tower-from $(BASE) --lm-from $(BASE) \
	  --open-share 0.5 --stage1-open-share 0.7 --glyph-px 11 24 --order-weight 0.5 --vision-steps 2200 \
	  --vision-lr 1e-3 --distill-weight 5.0 --stage1-start 100000000 --steps 2600 --lr 1e-3 --warmup 100 \
	  --seed 0 --tower-layers 6 --out $(OUT)/spote-tiny-open

lint: $(STAMP)
	$(BIN)/python -m ruff check spote pipelines cluster benchmarks training research tests

clean:
	rm -rf $(VENV) $(PROC_VENV) $(OUT) .pytest_cache
