"""Never lose a run: preemption, crashes, resume, concurrent runs and exhausted resources.

- A checkpoint counts only once its manifest (`manifest.json`: step, and each file's size and
  sha256) is written, after transformers has finished the folder. The manifest is the commit
  marker: a folder without a valid one (a kill or a full disk mid-save, a truncated file) is
  skipped with a warning and the previous checkpoint is used, so a kill -9 at any moment costs at
  most the steps since the last checkpoint. (checkpoints.py)
- A stage resumes only a checkpoint made with the same data, model, LoRA, seed and schedule
  settings, decided before anything loads. (resume.py)
- SIGTERM / SIGINT (spot preemption, `docker stop`, Ctrl-C) finish the current step, save a
  checkpoint and exit with 128 + the signal number; the same command resumes. Non-finite gradients
  or loss stop the run before the bad state is saved. (stopping.py)
- One process at a time per run and stage: an flock on `<stage dir>/.lock`, removed again however
  the stage ends short of the machine going down. (lock.py)
- Out of GPU memory and a full disk end as one line that says what to change. (resources.py)
- `stage_guard` runs a stage inside the lock and the resource errors. (guard.py)

Exit codes (trainer.errors): 2 bad input, 3 the run is already running, 4 non-finite
loss/gradients, 5 out of GPU memory, 6 disk full, 130 / 143 stopped by SIGINT / SIGTERM with a
checkpoint saved.
"""
