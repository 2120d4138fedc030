"""Real environments: the DMLab-style maze, adapters, trajectory collection and the on-disk dataset.

Importing this package only registers Gymnasium ids; no GL context is created until an env resets.
"""

try:
    from gymnasium.envs.registration import register, registry
except ModuleNotFoundError:     # a bare GPU machine: the model, tokenizer and samplers run without gymnasium
    register, registry = None, None

_IDS = {
    "DMLabMaze-v0": ("envs.maze.dmlab:DMLabMazeEnv", {}),
    "DMLabMazeLarge-v0": ("envs.maze.dmlab:DMLabMazeEnv", {"maze": "large", "max_episode_steps": 500}),
    "DMLabMazeGoal-v0": ("envs.maze.dmlab:DMLabMazeEnv", {"goal_mode": "terminate"}),
    "MiniWorldMaze64-v0": ("envs.adapters:make_miniworld", {"env_id": "MiniWorld-Maze-v0"}),
    "MiniWorldMazeS3-64-v0": ("envs.adapters:make_miniworld", {"env_id": "MiniWorld-MazeS3-v0"}),
    "MiniWorldMazeS3Fast64-v0": ("envs.adapters:make_miniworld", {"env_id": "MiniWorld-MazeS3Fast-v0"}),
    "MemoryMaze9x9-64-v0": ("envs.adapters:MemoryMazeEnv", {"size": 9}),
    "MemoryMaze15x15-64-v0": ("envs.adapters:MemoryMazeEnv", {"size": 15}),
    "DeepMindLab-v0": ("envs.adapters:DeepMindLabEnv", {}),
}

for _id, (_entry, _kwargs) in _IDS.items():
    if registry is not None and _id not in registry:
        register(id=_id, entry_point=_entry, kwargs=_kwargs)

# The dream env (worldmodel.dream.env), imported only when made; not a real env, so not in ENV_IDS. Its time
# limit is gymnasium's: 300 steps (dream_env.DEFAULT_MAX_EPISODE_STEPS) or make's max_episode_steps=N, which
# env.spec reports; make_dream_env turns the env's own limit off, make_vec passes the limit to the vector env.
if registry is not None and "MaskFlowDream-v0" not in registry:
    register(id="MaskFlowDream-v0", entry_point="worldmodel.dream.env:make_dream_env", max_episode_steps=300,
             vector_entry_point="worldmodel.dream.vector_env:MaskFlowDreamVectorEnv")

ENV_IDS = tuple(_IDS)
