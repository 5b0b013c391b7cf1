"""async-rl's Gymnasium worker: one Gymnasium environment in a process of its own, owned by an
actor process of async-rl and stepped by it over this process's stdin and stdout.

The actor (src/env/gymnasium.rs) embeds this file in its binary and runs it as
`python -c <this file>`; nothing else of async-rl is needed beside the interpreter and
`gymnasium`. See docs/ARCHITECTURE.md ("Gymnasium environments").

Protocol: every message is a frame, a little-endian u32 length followed by that many bytes.
A request is one op byte and its body; a reply is one status byte (0 ok, 1 error: the body is
UTF-8 text, a Python exception's traceback included; 2 no gymnasium module) and its body.

    b"M" make:   JSON {"id": str, "render": bool}
                 -> JSON {"obs": {...}, "action": {...}, "obs_space": str, "action_space": str}
    b"R" reset:  u8 seeded, u64 seed                -> observation bytes
    b"S" step:   i64 action index (0..n)             -> f64 reward, u8 terminated,
    b"C" step:   f32 x dims, a continuous action        u8 truncated, observation bytes
    b"G" render:                                     -> u32 height, u32 width, RGB bytes

Observations are written as the actor reads them: a vector of little-endian f32 (any numeric
Box, flattened; a Discrete space one-hot), or u8 frames [C, H, W] (a uint8 Box image, (H, W)
or (H, W, C), transposed here). Continuous actions are clipped to the Box's bounds here, as
Gymnasium's ClipAction wrapper (and CleanRL's continuous PPO, which applies it) does.

The worker ignores SIGINT (the actor decides when it stops; async-rl sets SIG_IGN before exec,
this is the same again) and exits when its stdin reaches EOF. What the environment prints goes
to stderr: stdout carries the protocol only.
"""

import json
import os
import signal
import struct
import sys
import traceback

signal.signal(signal.SIGINT, signal.SIG_IGN)

# The protocol's pipes; fd 1 becomes a copy of stderr so that a print() cannot corrupt a frame.
_IN = os.fdopen(os.dup(0), "rb", buffering=0)
_OUT = os.fdopen(os.dup(1), "wb", buffering=0)
os.dup2(2, 1)
sys.stdout = sys.stderr

OK, ERROR, NO_GYMNASIUM = 0, 1, 2


class Refused(Exception):
    """Bad input or a broken environment, said in one line without a traceback."""


def read_exact(n):
    chunks = []
    while n > 0:
        chunk = _IN.read(n)
        if not chunk:
            sys.exit(0)  # EOF: the actor is gone or done with us
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def reply(status, body=b""):
    _OUT.write(struct.pack("<IB", len(body) + 1, status) + body)


class Worker:
    def __init__(self):
        self.env = None
        self.np = None

    def make(self, body):
        request = json.loads(body.decode())
        try:
            import gymnasium
            import numpy
        except ImportError as e:
            raise MissingGymnasium(f"{sys.executable}: {e}") from None
        self.np = numpy
        self.gym = gymnasium
        kwargs = {"render_mode": "rgb_array"} if request.get("render") else {}
        self.env = gymnasium.make(request["id"], **kwargs)
        self.obs_encoder, obs = self.observation_space(self.env.observation_space)
        action = self.action_space(self.env.action_space)
        return json.dumps(
            {
                "obs": obs,
                "action": action,
                "obs_space": str(self.env.observation_space),
                "action_space": str(self.env.action_space),
            }
        ).encode()

    def observation_space(self, space):
        np, spaces = self.np, self.gym.spaces
        if isinstance(space, spaces.Box):
            shape = tuple(space.shape)
            image = space.dtype == np.uint8 and len(shape) in (2, 3)
            if image:
                h, w = shape[0], shape[1]
                c = shape[2] if len(shape) == 3 else 1
                return self.image(space, shape), {"kind": "frames", "shape": [c, h, w]}
            if not (np.issubdtype(space.dtype, np.number) or space.dtype == np.bool_):
                raise Refused(
                    f"observation space {space}: dtype {space.dtype} is not numeric "
                    "(expected a Box of numbers, or a uint8 image)"
                )
            n = int(np.prod(shape)) if shape else 1
            return self.vector(space, shape, n), {"kind": "vector", "n": n}
        if isinstance(space, spaces.Discrete):
            return self.one_hot(space), {"kind": "vector", "n": int(space.n)}
        raise Refused(
            f"observation space {space} ({type(space).__name__}) is not supported: "
            "expected a Box (a vector, or a uint8 image (H, W) or (H, W, C)) or a Discrete "
            "(one-hot); flatten a Dict or Tuple space with a wrapper first"
        )

    def vector(self, space, shape, n):
        np = self.np

        def encode(obs):
            a = np.asarray(obs)
            if a.shape != shape:
                raise Refused(
                    f"the observation has shape {a.shape}, expected {shape} "
                    f"(the observation space {space})"
                )
            if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
                raise Refused(
                    f"the observation has dtype {a.dtype}, expected numbers "
                    f"(the observation space {space})"
                )
            v = a.astype("<f4").reshape(n)
            if not np.all(np.isfinite(v)):
                raise Refused(
                    f"the observation holds NaN or infinite values {v.tolist()} "
                    "(as float32), expected finite numbers"
                )
            return v.tobytes()

        return encode

    def image(self, space, shape):
        np = self.np

        def encode(obs):
            a = np.asarray(obs)
            if a.shape != shape or a.dtype != np.uint8:
                raise Refused(
                    f"the observation is {a.dtype} {a.shape}, expected uint8 {shape} "
                    f"(the observation space {space})"
                )
            chw = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
            return np.ascontiguousarray(chw).tobytes()

        return encode

    def one_hot(self, space):
        np = self.np
        n, start = int(space.n), int(space.start)

        def encode(obs):
            try:
                i = int(obs) - start
            except (TypeError, ValueError):
                raise Refused(f"the observation {obs!r} is not an integer of {space}") from None
            if not 0 <= i < n:
                raise Refused(f"the observation {obs!r} is outside {space}")
            v = np.zeros(n, "<f4")
            v[i] = 1.0
            return v.tobytes()

        return encode

    def action_space(self, space):
        np, spaces = self.np, self.gym.spaces
        if isinstance(space, spaces.Discrete):
            self.action_start = int(space.start)
            self.action_n = int(space.n)
            return {"kind": "discrete", "n": int(space.n)}
        if isinstance(space, spaces.Box) and len(space.shape) == 1 and np.issubdtype(
            space.dtype, np.floating
        ):
            self.low = space.low.astype(np.float32)
            self.high = space.high.astype(np.float32)
            self.action_dtype = space.dtype

            def bound(x):
                return float(x) if np.isfinite(x) else None

            return {
                "kind": "box",
                "low": [bound(x) for x in self.low],
                "high": [bound(x) for x in self.high],
            }
        raise Refused(
            f"action space {space} ({type(space).__name__}) is not supported: expected a "
            "Discrete, or a 1-dimensional float Box"
        )

    def reset(self, body):
        seeded, seed = struct.unpack("<BQ", body)
        obs, _info = self.env.reset(seed=seed if seeded else None)
        return self.obs_encoder(obs)

    def step(self, action):
        obs, reward, terminated, truncated, _info = self.env.step(action)
        try:
            r = float(reward)
        except (TypeError, ValueError):
            raise Refused(f"the reward {reward!r} is not a number") from None
        if r != r or r in (float("inf"), float("-inf")):
            raise Refused(f"the reward is {r}, expected a finite number")
        return struct.pack("<dBB", r, bool(terminated), bool(truncated)) + self.obs_encoder(obs)

    def step_discrete(self, body):
        (i,) = struct.unpack("<q", body)
        if not 0 <= i < self.action_n:
            raise Refused(f"action {i} is outside 0..{self.action_n}")
        return self.step(i + self.action_start)

    def step_continuous(self, body):
        np = self.np
        a = np.frombuffer(body, "<f4")
        if a.shape != self.low.shape:
            raise Refused(f"the action has {a.size} values, expected {self.low.size}")
        if not np.all(np.isfinite(a)):
            raise Refused(f"the action {a.tolist()} is not finite")
        return self.step(np.clip(a, self.low, self.high).astype(self.action_dtype))

    def render(self, _body):
        frame = self.np.asarray(self.env.render())
        if frame.dtype != self.np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise Refused(
                f"render() returned {frame.dtype} {frame.shape}, expected an RGB image, "
                "uint8 (H, W, 3) (render_mode rgb_array)"
            )
        h, w, _ = frame.shape
        return struct.pack("<II", h, w) + self.np.ascontiguousarray(frame).tobytes()


class MissingGymnasium(Exception):
    pass


def main():
    worker = Worker()
    ops = {
        b"M": worker.make,
        b"R": worker.reset,
        b"S": worker.step_discrete,
        b"C": worker.step_continuous,
        b"G": worker.render,
    }
    while True:
        (n,) = struct.unpack("<I", read_exact(4))
        request = read_exact(n)
        op = ops.get(request[:1])
        try:
            if op is None:
                raise Refused(f"unknown request {request[:1]!r}")
            if worker.env is None and op != worker.make:
                raise Refused("no environment yet: the first request must be make")
            reply(OK, op(request[1:]))
        except MissingGymnasium as e:
            reply(NO_GYMNASIUM, str(e).encode())
        except Refused as e:
            reply(ERROR, str(e).encode())
        except Exception:  # noqa: BLE001 - the environment's own error, traceback and all
            reply(ERROR, traceback.format_exc().encode(errors="replace"))


main()
