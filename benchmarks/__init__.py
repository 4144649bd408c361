"""optimlab benchmarks: each module measures ratios in one process and writes JSON to results/."""
