# The gateway itself (not a sandbox): code-gateway with the PostgreSQL store and the kubernetes
# provisioner, as deploy/compose and deploy/kubernetes run it. Built by deploy/image/build.sh from
# a context it prepares (a wheelhouse, kernels/, iptables' packages): nothing is downloaded inside.
#   Local base, no registry:  BASE_IMAGE=code-gateway/base:<hash> (images/base/build.sh)
#   Public base:              BASE_IMAGE=debian:bookworm-slim (then python3 comes from its packages)
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

USER root
ENV LANG=C.UTF-8 PYTHONUNBUFFERED=1

# iptables: with the docker provisioner's tcp transport the gateway firewalls the kernel network
# on the host (it runs in the host's network namespace, deploy/compose). Extracted from Debian's
# packages (no maintainer scripts needed: binaries and libraries).
COPY debs/ /tmp/debs/
RUN set -eu; \
    for deb in /tmp/debs/*.deb; do dpkg -x "$deb" /; done; \
    ldconfig; rm -rf /tmp/debs; \
    ln -sf /usr/sbin/xtables-nft-multi /usr/sbin/iptables; \
    ln -sf /usr/sbin/xtables-nft-multi /usr/sbin/ip6tables; \
    iptables --version

# The package and its dependencies, from the wheelhouse, into a venv of the image's python3.
COPY wheels/ /tmp/wheels/
RUN set -eu; \
    python3 -m venv --without-pip /opt/code-gateway; \
    pip=$(ls /tmp/wheels/pip-*.whl); \
    /opt/code-gateway/bin/python "$pip/pip" install --quiet --no-index --find-links /tmp/wheels --no-compile \
        'code-interpreter-gateway[postgresql,kubernetes]'; \
    rm -rf /tmp/wheels; \
    /opt/code-gateway/bin/code-gateway --version

# The sandbox kernelspec, IPython profile and tools the gateway hands to sandboxes.
COPY kernels/ /opt/code-gateway/kernels/
ENV PATH=/opt/code-gateway/bin:$PATH \
    GATEWAY_KERNELLAUNCHER__KERNELS_DIR=/opt/code-gateway/kernels \
    GATEWAY_DATA_DIR=/var/lib/code-gateway \
    GATEWAY_IP=0.0.0.0 \
    GATEWAY_PORT=8888

# Options as GATEWAY_* variables (above; README, Configuration) or as arguments.
EXPOSE 8888
ENTRYPOINT ["code-gateway"]
