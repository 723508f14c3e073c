"""E2B template names -> sandbox images.

    templates = E2BTemplates(parent=app)
    templates.image_for("code-interpreter-v1")   # None: the default image
    templates.image_for("data-science")          # "registry.local/ds:1" if configured
    templates.image_for("nope")                  # TemplateNotFound (404)

``base`` (the ``e2b`` SDK's default) is the gateway's default image; ``code-interpreter-v1`` (the
code interpreter SDK's default) is ``code-gateway/full``, which adds the kernels of bash, R and
JavaScript/TypeScript (``make images`` builds it). Other names must be configured:

    c.E2BTemplates.images = {"data-science": "registry.local/ds:1"}
    GATEWAY_E2BTEMPLATES__IMAGES='{"data-science": "registry.local/ds:1"}'
"""

from __future__ import annotations

from typing import Any

from traitlets import Dict, List, Unicode, default
from traitlets.config import LoggingConfigurable

from gateway.errors import NotFound
from gateway.sandboxes.contexts import full_image


class TemplateNotFound(NotFound):
    code = "template_not_found"


class E2BTemplates(LoggingConfigurable):
    default_templates = List(
        Unicode(), default_value=["base"],
        help="E2B template names that mean the gateway's default sandbox image.",
    ).tag(config=True)
    images = Dict(
        key_trait=Unicode(), value_trait=Unicode(),
        help="Other E2B template names and the sandbox image each one runs, e.g. "
        "{'data-science': 'registry.local/ds:1'} (default: code-interpreter-v1 is code-gateway/full).",
    ).tag(config=True)

    @default("images")
    def _images_default(self) -> dict[str, str]:
        return {"code-interpreter-v1": full_image()}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def known(self) -> list[str]:
        return [*self.default_templates, *sorted(self.images)]

    def image_for(self, template: str) -> str | None:
        """The image of ``template`` (None: the default image); ``TemplateNotFound`` if there is none."""
        if template in self.images:
            return str(self.images[template])
        if template in self.default_templates:
            return None
        raise TemplateNotFound(f"template '{template}' not found: this gateway has {', '.join(self.known())}")
