"""POPGym's 6×6 labyrinths as one batched NumPy environment (E3).

POPGym's `LabyrinthEscape` / `LabyrinthExplore` step one maze at a time in Python, and the
wrappers previous-action → antialias → flatten go through gymnasium's generic space
flattening; together ~150 µs per step. `MazeBatch` keeps POPGym for what defines the task,
the maze generator (`MazeEnv.reset`, mazelib's Hunt-and-Kill + outer entrances), and
replays its dynamics and the wrapped observation for all mazes at once with array ops.
tests/test_popgym_task.py steps both side by side on random actions and checks that
observations, rewards, terminations and truncations are identical.

The wrapped observation (56 floats), in gymnasium's flatten order:
    one-hot(9 cells of the 3×3 local view, 5 cell kinds) ; one-hot(env's previous action,
    5 incl. NONE) ; one-hot(wrapper's previous action, 4, null action 0) ; one-hot(is_t0, 2)
POPGym quirks kept on purpose: the local view at the top/left border is not centred (it
is the clipped slice padded with walls at the bottom/right), and an episode is truncated
after `length − 1` steps (`curr_step == max_episode_length − 1`).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CELL_KINDS = 5  # FREE, OBSTACLE, START, GOAL, HIDDEN
FREE, OBSTACLE, GOAL = 0, 1, 3
NONE_ACTION = 4
ACTIONS = 4
OBS_DIM = 9 * CELL_KINDS + CELL_KINDS + ACTIONS + 2  # 56
# (dy, dx) of LEFT, RIGHT, UP, DOWN as POPGym's MazeEnv.move maps them
MOVES = np.array([(0, -1), (0, 1), (-1, 0), (1, 0)])


def popgym_env(env: str, size: int, length: int):
    """The POPGym environment itself (unwrapped)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POPGym warns that mazes are weak POMDP benchmarks
        if env == "escape":
            from popgym.envs.labyrinth_escape import LabyrinthEscape
            return LabyrinthEscape(maze_dims=(size, size), episode_length=length)
        from popgym.envs.labyrinth_explore import LabyrinthExplore
        return LabyrinthExplore(maze_dims=(size, size), episode_length=length)


def wrapped_popgym_env(env: str, size: int, length: int):
    """POPGym's own wrapper chain previous-action → antialias → flatten (the reference)."""
    from popgym.wrappers import Antialias, Flatten, PreviousAction
    return Flatten(Antialias(PreviousAction(popgym_env(env, size, length))))


class _GlobalRngGuard:
    """POPGym seeds Python's and NumPy's global RNGs in reset(); undo that afterwards."""

    def __enter__(self) -> None:
        self.py = random.getstate()
        self.np = np.random.get_state()

    def __exit__(self, *exc) -> None:
        random.setstate(self.py)
        np.random.set_state(self.np)


def generate(env, seed: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Reset a POPGym maze env with `seed`; its grid (START/GOAL marked) and start (y, x)."""
    with _GlobalRngGuard():
        env.reset(seed=int(seed))
    return env.maze.grid.astype(np.int64).copy(), tuple(int(v) for v in env.position)


@dataclass
class StepResult:
    obs: np.ndarray  # (E, OBS_DIM) float32
    reward: np.ndarray  # (E,) float64, POPGym's reward
    terminated: np.ndarray  # (E,) bool
    truncated: np.ndarray  # (E,) bool


class MazeBatch:
    """E labyrinths stepped together; every call to `reset` draws fresh mazes."""

    def __init__(self, env: str, num_envs: int, size: int = 6, length: int = 80) -> None:
        if env not in ("escape", "explore"):
            raise ValueError(f"unknown labyrinth {env!r}")
        self.kind = env
        self.num_envs = num_envs
        self.length = length
        self._generator = popgym_env(env, size, length)

    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        if len(seeds) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} maze seeds, got {len(seeds)}")
        grids, starts = zip(*(generate(self._generator, s) for s in seeds), strict=True)
        self.grid = np.stack(grids)  # (E, H, W)
        self.pos = np.array(starts, dtype=np.int64)  # (E, 2) (y, x)
        e = np.arange(self.num_envs)
        self.explored = np.zeros_like(self.grid, dtype=bool)
        self.explored[e, self.pos[:, 0], self.pos[:, 1]] = True
        self.free = self.grid != OBSTACLE
        self.pos_reward = 1.0 / (self.grid == FREE).sum((1, 2))  # Explore's reward per square
        self.step_count = np.zeros(self.num_envs, dtype=np.int64)
        none = np.full(self.num_envs, NONE_ACTION)
        return self.observe(none, np.zeros(self.num_envs, dtype=np.int64), first=True)

    def _move(self, actions: np.ndarray) -> np.ndarray:
        limit = np.array(self.grid.shape[1:]) - 1
        new = np.clip(self.pos + MOVES[actions], 0, limit)
        e = np.arange(self.num_envs)
        blocked = self.grid[e, new[:, 0], new[:, 1]] == OBSTACLE
        return np.where(blocked[:, None], self.pos, new)

    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> StepResult:
        """Step the mazes where `active` (all by default); the others are left as they are."""
        actions = np.asarray(actions, dtype=np.int64)
        active = np.ones(self.num_envs, bool) if active is None else np.asarray(active, bool)
        e = np.arange(self.num_envs)
        new = self._move(actions)
        new_square = ~self.explored[e, new[:, 0], new[:, 1]]
        self.pos = np.where(active[:, None], new, self.pos)
        self.explored[e[active], self.pos[active, 0], self.pos[active, 1]] = True
        self.step_count += active
        step_penalty = -1.0 / self.length
        if self.kind == "escape":
            goal = self.grid[e, self.pos[:, 0], self.pos[:, 1]] == GOAL
            reward = step_penalty + goal.astype(np.float64)
            terminated = goal
        else:
            reward = np.where(new_square, self.pos_reward, step_penalty)
            terminated = (self.free == self.explored).all((1, 2))
        truncated = self.step_count == self.length - 1
        obs = self.observe(actions, actions, first=False)
        return StepResult(obs, reward, terminated & active, truncated & active)

    def local_view(self) -> np.ndarray:
        """POPGym's 3×3 view: the clipped slice around the agent, padded with walls (E, 9)."""
        h, w = self.grid.shape[1:]
        rows = self._axis(self.pos[:, 0], h)
        cols = self._axis(self.pos[:, 1], w)
        e = np.arange(self.num_envs)[:, None, None]
        r, c = rows[0][:, :, None], cols[0][:, None, :]
        inside = rows[1][:, :, None] & cols[1][:, None, :]
        cells = self.grid[e, np.minimum(r, h - 1), np.minimum(c, w - 1)]
        return np.where(inside, cells, OBSTACLE).reshape(self.num_envs, 9)

    @staticmethod
    def _axis(coord: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        start = np.maximum(coord - 1, 0)
        idx = start[:, None] + np.arange(3)
        last = np.minimum(coord + 1, size - 1)
        return idx, idx <= last[:, None]

    def observe(self, env_action: np.ndarray, wrapper_action: np.ndarray,
                first: bool) -> np.ndarray:
        n = self.num_envs
        obs = np.zeros((n, OBS_DIM), dtype=np.float32)
        view = self.local_view()
        rows = np.arange(n)[:, None]
        obs[rows, np.arange(9) * CELL_KINDS + view] = 1.0
        obs[np.arange(n), 9 * CELL_KINDS + env_action] = 1.0
        obs[np.arange(n), 10 * CELL_KINDS + wrapper_action] = 1.0
        obs[:, 10 * CELL_KINDS + ACTIONS + (1 if first else 0)] = 1.0
        return obs
