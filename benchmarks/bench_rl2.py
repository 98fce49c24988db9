"""RL² speed: env steps/s of the batched bandit/MDP simulators, and rollout + PPO update time per policy memory.

Environments: ``step`` of B tasks at once with random actions (the raw simulator) and of the RL² trial wrapper (which
also builds the policy input), in env steps per second (B steps per call). Policies: for each mixer, the rollout of
``--trials`` trials step by step with the carried state (no grad), and one PPO minibatch update (the whole trial in
one parallel forward, backward, Adam step) on ``--trials / 4`` trials; ratios to the GRU.

    OMP_NUM_THREADS=2 python benchmarks/bench_rl2.py --json /work/runs-rl2/bench.json
    python benchmarks/bench_rl2.py --quick            # tiny sizes, a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _timing import environment, measure  # noqa: E402

from innerloop.rl import BernoulliBandit, RL2Policy, TabularMDP, TrialEnv, gae, normalize, ppo_loss, rollout  # noqa: E402

MIXERS = ["gru", "lstm", "ttt_linear", "ttt_mlp", "mamba", "attention"]


def bench_envs(batches: list[int], repeats: int) -> list[dict]:
    rows = []
    makers = (("bandit k=5", lambda b: BernoulliBandit(5, b)), ("mdp 10x5", lambda b: TabularMDP(batch_size=b)))
    for name, make in makers:
        for B in batches:
            env = make(B)
            env.sample_tasks()
            a = torch.randint(0, 5, (B,))

            def raw(env=env, a=a, n=50):
                for _ in range(n):
                    if not env._started:
                        env.reset()
                    env.step(a)

            trials = TrialEnv(make(B), episodes=10**9)
            trials.reset(seed=0)
            t = measure(raw, repeats=repeats)
            w = measure(lambda trials=trials, a=a: [trials.step(a) for _ in range(50)], repeats=repeats)
            rows.append({"env": name, "batch": B, "steps_per_s": 50 * B / t.median,
                         "trial_steps_per_s": 50 * B / w.median})  # fmt: skip
    return rows


def bench_policies(mixers: list[str], hidden: int, trials: int, episodes: int, repeats: int) -> list[dict]:
    rows = []
    env = TrialEnv(BernoulliBandit(5, trials), episodes)
    mb = max(1, trials // 4)
    for mixer in mixers:
        torch.manual_seed(0)
        pi = RL2Policy(env.input_size, 5, mixer, hidden_size=hidden, num_heads=4)
        opt = torch.optim.Adam(pi.parameters(), lr=1e-4)
        ro = rollout(pi, env, 0)
        adv, ret = gae(ro.rewards, ro.values)
        adv = normalize(adv)

        def update(pi=pi, opt=opt, ro=ro, adv=adv, ret=ret):
            logits, values, _ = pi(ro.inputs[:mb])
            loss = ppo_loss(logits, values, ro.actions[:mb], ro.logp[:mb], adv[:mb], ret[:mb]).total
            opt.zero_grad()
            loss.backward()
            opt.step()

        r = measure(lambda pi=pi: rollout(pi, env, 1), repeats=repeats)
        u = measure(update, repeats=repeats)
        rows.append({"mixer": mixer, "params": sum(p.numel() for p in pi.parameters()), "rollout_s": r.median,
                     "update_s": u.median})  # fmt: skip
    gru = next((r for r in rows if r["mixer"] == "gru"), rows[0])
    for r in rows:
        r["rollout_vs_gru"] = r["rollout_s"] / gru["rollout_s"]
        r["update_vs_gru"] = r["update_s"] / gru["update_s"]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    p.add_argument("--mixers", default=",".join(MIXERS))
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--trials", type=int, default=256, help="trials per rollout; the update takes a quarter")
    p.add_argument("--episodes", type=int, default=100, help="bandit pulls per trial (T)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.hidden, a.trials, a.episodes, a.repeats = 16, 8, 6, 2
    batches = [1, 8] if a.quick else [1, 256, 4096]
    envs = bench_envs(batches, a.repeats)
    pols = bench_policies(a.mixers.split(","), a.hidden, a.trials, a.episodes, a.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| env | B | env steps/s (raw) | env steps/s (trial wrapper + RL² input) |\n|---|---|---|---|")
    for r in envs:
        print(f"| {r['env']} | {r['batch']} | {r['steps_per_s']:,.0f} | {r['trial_steps_per_s']:,.0f} |")
    print(f"\nbandit k=5, T={a.episodes} steps per trial, hidden {a.hidden}: rollout of {a.trials} trials, PPO update "
          f"of {max(1, a.trials // 4)} trials")  # fmt: skip
    print("| memory | params | rollout (s) | vs GRU | PPO update (s) | vs GRU |\n|---|---|---|---|---|---|")
    for r in pols:
        print(f"| {r['mixer']} | {r['params']:,} | {r['rollout_s']:.3f} | {r['rollout_vs_gru']:.2f} | "
              f"{r['update_s']:.3f} | {r['update_vs_gru']:.2f} |")  # fmt: skip
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "environment": environment(), "envs": envs,
                                            "policies": pols}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
