"""Check that the simulation of this tree makes the same choices as another git revision's (e.g. ``main``).

    python benchmarks/methods/agentsim_same_structure.py main

Runs one scripted 120-agent day with each and compares every column that does not hold generated text or
depend on it (ids, authors, ticks, engagement counts, reactions, follows, tick summaries, memory-version
bookkeeping; not belief events, which are diffs of generated belief lists). Texts differ between revisions whose
seeds differ (per-request seeds since the store rework); the choices must not.
"""

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

RUN = r"""
import hashlib, sys
sys.path.insert(0, sys.argv[1])
from weakstrong.agentsim import ScriptedBackend, Simulation, SimulationConfig
cfg = SimulationConfig(agents=120, days=1, ticks_per_day=40, actions_per_tick=2, episodic_every=5, semantic_every=10,
                       feed_size=5, feed_window_ticks=12, seed=1)
sim = Simulation(cfg, ScriptedBackend(), None)
sim.run()
q = {"posts": "SELECT id, agent_id, tick, day, n_reactions, n_comments, engagement FROM posts ORDER BY id",
     "comments": "SELECT id, post_id, agent_id, tick, n_reactions, engagement FROM comments ORDER BY id",
     "reactions": "SELECT * FROM reactions ORDER BY id",
     "follows": "SELECT * FROM follows ORDER BY follower_id, followee_id",
     "ticks": "SELECT tick, day, tick_of_day, active_agents, posts, comments, reactions, follows, episodic_rewrites, "
              "semantic_rewrites FROM ticks ORDER BY tick",  # belief_events: counted from the (generated) beliefs
     "memory_versions": "SELECT id, agent_id, kind, version, posts_count, tick FROM memory_versions ORDER BY id"}
for k, sql in q.items():
    rows = [tuple(r) for r in sim.store.conn.execute(sql).fetchall()]
    print(k, len(rows), hashlib.sha256(repr(rows).encode()).hexdigest()[:16])
"""


def digest(src: str) -> str:
    return subprocess.run([sys.executable, "-c", RUN, src], capture_output=True, text=True, check=True).stdout


if __name__ == "__main__":
    rev = sys.argv[1] if len(sys.argv) > 1 else "main"
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(f"git archive {rev} weakstrong | tar -x -C {tmp}", shell=True, check=True, cwd=root)
        theirs, mine = digest(tmp), digest(str(root))
    for a, b in zip(theirs.splitlines(), mine.splitlines()):
        print(f"{a:45s} {'==' if a == b else '!='} {b}")
    sys.exit(0 if theirs == mine else 1)
