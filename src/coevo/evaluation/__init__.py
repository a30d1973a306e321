"""Using and judging generators: translating image folders, quality metrics (PSNR, SSIM, FID/KID),
perceptual distances to a teacher, image grids, the run report and reading a finished run back.

* :mod:`.translate` -- images in, PNGs out; :mod:`.evaluate` -- a generator on a data set
* :mod:`.metrics` -- PSNR, SSIM, FID/KID; :mod:`.perceptual` -- distances for the search and reports
* :mod:`.viz` -- grids; :mod:`.report` -- report.md/json; :mod:`.results` -- a finished run as objects
"""
