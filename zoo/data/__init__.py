"""Where training and evaluation data come from, read through HF ``datasets``.

Readers: ``files.py`` (CSV/JSON/JSONL/Parquet, imagefolder, save_to_disk, hub
names; a data file's column of image paths becomes an ``Image`` column in
``images.py``), ``builtin.py`` (``builtin:digits``); label planning in
``labels.py``, example encoding in ``encode.py``, batching in ``collate.py``.
This layer sits below the tasks, which use it; interpreting columns for a task
and encoding both splits is ``zoo.train.data.prepare_data``.
"""
