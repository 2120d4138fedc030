"""Frame and video metrics: PSNR/SSIM, FVD and the I3D network with its weights."""
