"""File suffixes the tool reads and writes. No heavy imports: the CLI uses these to expand folders
before torch or PyAV are loaded."""

# Photos written by engines.media.photo_io (and picked up from folders).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")
# Films taken for video without probing (engines.video.film.is_video); anything else is probed.
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mkv", ".mov", ".avi", ".webm", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg", ".vob",
     ".wmv", ".flv", ".3gp", ".ogv", ".mxf", ".dv", ".y4m", ".nut"}
)  # fmt: skip
# Film outputs: suffix -> FFmpeg muxer.
VIDEO_OUTPUT_FORMATS: dict[str, str] = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov"}
