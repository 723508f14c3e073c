"""E2B template names -> sandbox images.

    templates = E2BTemplates(parent=app)
    templates.image_for("code-interpreter-v1")   # None: the default image
    templates.image_for("data-science")          # "registry.local/ds:1" if configured
    templates.image_for("nope")                  # TemplateNotFound (404)

``code-interpreter-v1`` (the code interpreter SDK's default) and ``base`` (the ``e2b`` SDK's) are
the gateway's default image; any other name must be configured:

    c.E2BTemplates.images = {"data-science": "registry.local/ds:1"}
    GATEWAY_E2BTEMPLATES__IMAGES='{"data-science": "registry.local/ds:1"}'
"""

from __future__ import annotations

from typing import Any

from traitlets import Dict, List, Unicode
from traitlets.config import LoggingConfigurable

from gateway.errors import NotFound


class TemplateNotFound(NotFound):
    code = "template_not_found"


class E2BTemplates(LoggingConfigurable):
    default_templates = List(
        Unicode(), default_value=["code-interpreter-v1", "base"],
        help="E2B template names that mean the gateway's default sandbox image.",
    ).tag(config=True)
    images = Dict(
        key_trait=Unicode(), value_trait=Unicode(), default_value={},
        help="Other E2B template names and the sandbox image each one runs, e.g. "
        "{'data-science': 'registry.local/ds:1'}.",
    ).tag(config=True)

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
