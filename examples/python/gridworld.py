"""A 5x5 gridworld as a Gymnasium environment, to train with async-rl:

    PYTHONPATH=examples/python scripts/learner --config examples/python/gridworld-a3c.toml

`gymnasium:gridworld:GridWorld-v0` imports this module (which registers the id) in each
actor's Python worker. The agent starts in the top-left corner and walks (up, right, down,
left) to the goal in the bottom-right corner: +1 there, -0.01 for every other step, at most
50 steps (a truncation). The best return is 0.93 (8 steps).
"""

import gymnasium as gym
import numpy as np
from gymnasium import spaces

SIZE = 5
MOVES = [(-1, 0), (0, 1), (1, 0), (0, -1)]  # up, right, down, left


class GridWorld(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, render_mode=None):
        # The agent's row and column, scaled to [0, 1].
        self.observation_space = spaces.Box(0.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Discrete(4)
        self.render_mode = render_mode
        self.pos = (0, 0)

    def obs(self):
        return np.array(self.pos, np.float32) / (SIZE - 1)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = (0, 0)
        return self.obs(), {}

    def step(self, action):
        dr, dc = MOVES[action]
        r = min(max(self.pos[0] + dr, 0), SIZE - 1)
        c = min(max(self.pos[1] + dc, 0), SIZE - 1)
        self.pos = (r, c)
        at_goal = self.pos == (SIZE - 1, SIZE - 1)
        return self.obs(), 1.0 if at_goal else -0.01, at_goal, False, {}

    def render(self):
        # 20 pixels a cell: white floor, green goal, blue agent (`play --record` makes a GIF).
        img = np.full((SIZE * 20, SIZE * 20, 3), 255, np.uint8)
        img[-20:, -20:] = (0, 160, 0)
        r, c = self.pos
        img[r * 20 + 4 : r * 20 + 16, c * 20 + 4 : c * 20 + 16] = (0, 0, 200)
        return img


gym.register("GridWorld-v0", entry_point=GridWorld, max_episode_steps=50)
