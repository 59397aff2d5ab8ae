"""GIT (microsoft/git-base-coco, git-large-coco): wrapper and builder in model.py, the published and
tiny configs in configs.py."""

from recon_ft.models.git.model import GitCaptioner, build_git

__all__ = ["GitCaptioner", "build_git"]
