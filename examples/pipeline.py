"""provstore pipeline: preprocessing -> features -> training -> evaluation, resumable.

    python pipeline.py [STORE_DIR] [--crash-after N]     # default store: pipeline-study

Synthetic multichannel signals per subject (numpy only), z-scored, reduced to log
band powers, fitted with ridge regression (regularized least squares) for several
alphas, and scored by R² on held-out trials. Every step is a tracked function:
its body, which prints "computing <step>", runs only on a miss. Run it twice: the
second run computes nothing. With --crash-after N the process dies abruptly
(os._exit, like kill -9) after N tracked calls; the next run recomputes only the
calls that were not committed, and loads the others from the store.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import provstore

SUBJECTS = ("01", "02", "03")
ALPHAS = (0.1, 10.0, 1000.0)
RATE, SECONDS = 100, 2  # Hz, seconds per trial
N_TRIALS, N_CHANNELS, N_TRAIN = 120, 4, 80
BANDS = ((1, 4), (4, 8), (8, 13), (13, 30))  # Hz; module constants are part of the code version


@provstore.track  # records into the store opened last (see main)
def simulate(subject: str) -> tuple[np.ndarray, np.ndarray]:
    """Noisy oscillations (trials x channels x samples) and a target driven by their power."""
    print("  computing simulate")
    rng = np.random.default_rng(int(subject))
    t = np.arange(RATE * SECONDS) / RATE
    amp = rng.lognormal(0.0, 0.5, (N_TRIALS, N_CHANNELS, len(BANDS)))
    waves = np.stack([np.sin(2 * np.pi * (lo + hi) / 2 * t
                             + rng.uniform(0, 2 * np.pi, (N_TRIALS, N_CHANNELS, 1)))
                      for lo, hi in BANDS], axis=2)
    signals = (amp[..., None] * waves).sum(axis=2) + rng.normal(0, 0.5, (N_TRIALS, N_CHANNELS,
                                                                          t.size))
    truth = rng.normal(0, 1, N_CHANNELS * len(BANDS))
    target = np.log(amp).reshape(N_TRIALS, -1) @ truth + rng.normal(0, 0.3, N_TRIALS)
    return signals, target  # a tuple: stored as two artifacts


@provstore.track
def zscore(signals: np.ndarray) -> np.ndarray:
    """Standardize each channel over all trials and samples."""
    print("  computing zscore")
    mean = signals.mean(axis=(0, 2), keepdims=True)
    return (signals - mean) / signals.std(axis=(0, 2), keepdims=True)


@provstore.track
def band_power(signals: np.ndarray) -> np.ndarray:
    """Log mean power per channel and band: trials x (channels * bands)."""
    print("  computing band_power")
    power = np.abs(np.fft.rfft(signals, axis=-1)) ** 2
    freqs = np.fft.rfftfreq(signals.shape[-1], 1 / RATE)
    bands = [power[..., (freqs >= lo) & (freqs < hi)].mean(axis=-1) for lo, hi in BANDS]
    return np.log(np.stack(bands, axis=-1)).reshape(len(signals), -1)


@provstore.track
def fit(features: np.ndarray, target: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge regression on the training trials: weights, then the intercept."""
    print(f"  computing fit (alpha={alpha})")
    x, y = features[:N_TRAIN], target[:N_TRAIN]
    xc = x - x.mean(axis=0)
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - y.mean()))
    return np.append(w, y.mean() - x.mean(axis=0) @ w)


@provstore.track
def evaluate(model: np.ndarray, features: np.ndarray, target: np.ndarray) -> float:
    """R² of the model on the held-out trials."""
    print("  computing evaluate")
    x, y = features[N_TRAIN:], target[N_TRAIN:]
    residual = y - (x @ model[:-1] + model[-1])
    return float(1 - (residual**2).sum() / ((y - y.mean()) ** 2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description="A resumable provstore pipeline.")
    parser.add_argument("store", nargs="?", default="pipeline-study")
    parser.add_argument("--crash-after", type=int, default=0, metavar="N",
                        help="exit abruptly after N tracked calls (simulates a crash)")
    args = parser.parse_args()
    calls = 0

    def done() -> None:
        """Count one finished tracked call; crash after the Nth if asked to."""
        nonlocal calls
        calls += 1
        if calls == args.crash_after:
            print(f"simulated crash after {calls} tracked calls", flush=True)
            os._exit(1)  # no cleanup at all, like kill -9

    ctx = provstore.open(args.store)
    for subject in SUBJECTS:
        with ctx.scope(subject=subject):  # names below live in "subject=01"...
            print(f"subject={subject}", flush=True)
            ctx.signals, ctx.target = simulate(subject)
            done()
            ctx.clean = zscore(ctx.signals)  # keyed on the stored artifact: no re-hash
            done()
            ctx.features = band_power(ctx.clean)
            done()
            for alpha in ALPHAS:
                with ctx.scope(alpha=alpha):  # "subject=01/alpha=0.1"...
                    ctx.model = fit(ctx.features, ctx.target, alpha)  # found one level up
                    done()
                    ctx.r2 = evaluate(ctx.model, ctx.features, ctx.target)
                    done()

    print(f"\n{calls} tracked calls. R² on held-out trials:")
    print("subject " + "".join(f"{f'alpha={a}':>14}" for a in ALPHAS))
    for subject in SUBJECTS:
        scores = [ctx.scope(subject=subject, alpha=a).r2 for a in ALPHAS]
        print(f"{subject:<8}" + "".join(f"{r2:>14.3f}" for r2 in scores))
    # Rerunning binds the same values again, which adds no version.
    print()
    print(ctx.history(f"subject={SUBJECTS[0]}/alpha={ALPHAS[1]}/r2"))


if __name__ == "__main__":
    main()
