"""The sandbox image's ``python3 -m ipykernel_launcher``: ipykernel's own launcher, started lean.

The image installs it ahead of Debian's (``/usr/local/lib/python3.11/dist-packages`` comes first
on ``sys.path``), so the kernelspec's command stays the stock one. It does what ipykernel's does,
with ipykernel imported by ``code_gateway_lean``: what an idle kernel never uses is imported on
first use.
"""

import sys

if __name__ == "__main__":
    # As ipykernel's launcher: no imports from the working directory while loading (added back by
    # InteractiveShellApp.init_path()).
    if sys.path[0] == "":
        del sys.path[0]

    import code_gateway_lean

    code_gateway_lean.kernel_app_class().launch_instance()
