"""The dataset: scan a folder of captioned images, bucket them by aspect ratio, load pixels, batch latents."""
