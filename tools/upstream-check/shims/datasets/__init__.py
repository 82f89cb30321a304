"""A stand-in for Hugging Face `datasets` on a machine with no network (the GPU test machine).

Only what the MoE-CAP loaders for gsm8k and LongBench-v2 call: load_dataset(name, subset,
split) returning a column-addressable Dataset with map and filter. Rows are synthetic English
text written here (no data set is downloaded); the fixed-length loader repeats or cuts it to
the target token count, so its content does not matter for performance runs.
"""

_WORDS = ("the model routes each token to a few experts and the batch shares the weights it "
          "reads so decode time is set by memory bandwidth while prefill is set by compute ").split()


def _text(i, n):
    return " ".join(_WORDS[(i * 7 + j) % len(_WORDS)] for j in range(n))


class Dataset:
    def __init__(self, rows):
        self._rows = list(rows)

    def __len__(self):
        return len(self._rows)

    def __iter__(self):
        return iter(self._rows)

    def __getitem__(self, key):
        if isinstance(key, str):
            return [r[key] for r in self._rows]
        if isinstance(key, slice):
            return Dataset(self._rows[key])
        return self._rows[key]

    @property
    def column_names(self):
        return list(self._rows[0]) if self._rows else []

    def map(self, fn, **_):
        out = []
        for r in self._rows:
            r2 = dict(r)
            r2.update(fn(r) or {})
            out.append(r2)
        return Dataset(out)

    def filter(self, fn, **_):
        return Dataset(r for r in self._rows if fn(r))

    def select(self, idx):
        return Dataset(self._rows[i] for i in idx)


def load_dataset(name, subset=None, split="test", **_):
    n = 64
    if "gsm8k" in name:
        return Dataset({"question": _text(i, 80) + "?", "answer": "work #### %d" % i} for i in range(n))
    if "LongBench" in name:
        return Dataset({"_id": str(i), "domain": "d", "sub_domain": subset or "s", "difficulty": "easy",
                        "length": "short", "question": _text(i, 20) + "?", "choice_A": "a", "choice_B": "b",
                        "choice_C": "c", "choice_D": "d", "answer": "A", "context": _text(i, 2000)}
                       for i in range(n))
    raise ValueError("offline datasets stand-in: no rows for %r" % name)
