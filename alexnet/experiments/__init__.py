"""The paper's experiments: `alexnet relu-vs-tanh` (figure 1), `alexnet ablate` (sections 3-4)."""
