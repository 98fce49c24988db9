"""Data for every workbench, one subpackage per domain:

- :mod:`innerloop.data.text`: byte/BPE tokenizers, text corpora (bundled tiny-shakespeare, a file, a folder of
  documents), on-disk token caches, window sampling, and the LM data of a run (:func:`innerloop.data.text.load_data`);
- :mod:`innerloop.data.fewshot`: sinusoid regression, Omniglot, mini-ImageNet and the episodic N-way K-shot sampler;
- :mod:`innerloop.data.synthetic`: memory tasks for sequence mixers (copy, recall, adding, ...) and the 2-link-arm
  trajectory task, built by name with :func:`innerloop.data.synthetic.make_task`.

The few-shot basics are re-exported here: ``from innerloop.data import SinusoidTasks, TaskBatch, Taskset, mean_ci95``.
"""

from innerloop.data.fewshot import SinusoidTasks, TaskBatch, Taskset, mean_ci95

__all__ = ["SinusoidTasks", "TaskBatch", "Taskset", "mean_ci95"]
