"""Video datasets for training: WebVid-style CSVs, folders of captioned videos, and a toy generator for tests."""

from .videos import ClipSpec, VideoClipDataset, VideoRecord, folder_records, webvid_records

__all__ = ["ClipSpec", "VideoClipDataset", "VideoRecord", "folder_records", "webvid_records"]
