"""The vocabulary of the study's trial rows (trials.parquet, the metrics parts): trial statuses and the selection.

The sink writes these values and the analysis reads them; both import them from here.
"""

COMPLETED = "completed"  # trained every epoch of its budget
STOPPED = "stopped"  # stopped early by the scheduler (ASHA)
FAILED = "failed"  # raised, or was lost with its node, past its retries
RUNNING = "running"  # started, not ended (yet)
PENDING = "pending"  # planned, not started
ENDED = (COMPLETED, STOPPED, FAILED)  # a trial in one of these states has all the epochs it will have
SCORED = (COMPLETED, STOPPED)  # ended with its epochs' scores
STATUSES = (*ENDED, RUNNING, PENDING)  # every status a row can have, in the order tables list them

SELECT = ("valid_heldout_iou", "valid_heldout_psnr")  # the selected epoch: best on these in order, then the earliest
SELECTED = ("valid_heldout_iou", "valid_heldout_psnr_fg", "valid_heldout_psnr", "valid_heldout_ssim", "valid_iou",
            "valid_psnr_fg", "valid_psnr", "valid_ssim")  # copied to trials.parquet as selected_<key>; holds SELECT
