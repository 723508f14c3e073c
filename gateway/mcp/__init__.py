"""The MCP server at ``/mcp`` (streamable HTTP): the sandbox tools over the gateway's own managers."""
