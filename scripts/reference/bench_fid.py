#!/usr/bin/env python3
"""FID statistics + Fréchet distance with numpy / scipy (pytorch-fid's calculate_frechet_distance),
side by side with `cargo run --release --example bench_fid`.

    .venv/bin/python scripts/reference/bench_fid.py [SAMPLES] [DIM] [REPEATS]

Same feature recipe as the Rust example (a random mixing of 64 Gaussian factors plus noise);
median of REPEATS runs per stage. Threads: numpy/scipy use the BLAS threads the machine has.
"""
import sys
import time

import numpy as np
from pytorch_fid.fid_score import calculate_frechet_distance


def features(n, d, seed):
    rs = np.random.RandomState(seed)
    mix = rs.uniform(-1, 1, (64, d)).astype(np.float32)
    z = rs.uniform(-1, 1, (n, 64)).astype(np.float32)
    return z @ mix + rs.uniform(-0.1, 0.1, (n, d)).astype(np.float32)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    d = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    a, b = features(n, d, 1), features(n, d, 2)
    ts, td = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        m1, s1 = np.mean(a, axis=0), np.cov(a, rowvar=False)
        m2, s2 = np.mean(b, axis=0), np.cov(b, rowvar=False)
        ts.append(time.perf_counter() - t0)
        t1 = time.perf_counter()
        value = calculate_frechet_distance(m1, s1, m2, s2)
        td.append(time.perf_counter() - t1)
    print(f"scipy fid n={n} d={d}: stats {np.median(ts):.3f} s, distance {np.median(td):.3f} s "
          f"(median of {repeats}); FID {value:.4f}")


if __name__ == "__main__":
    main()
