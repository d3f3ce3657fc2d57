# vmbackup: one image for every role (coordinator, proxy, writer, repo-init, verify,
# maintenance). Debian 12 (bookworm) slim with Debian's Python 3.11, runs as 10001:10001.
#
#   docker build -t registry.example.com/vmbackup/vmbackup:0.1.0 .
#
# Entry point `tini -- vmbackup` (tini is PID 1 and forwards SIGTERM: the services drain on
# it); `python` (the project's venv) and `/bin/sh` resolve for the k8s commands that
# override it. Nothing writes outside /tmp and mounted volumes (readOnlyRootFilesystem):
# bytecode is compiled here and PYTHONDONTWRITEBYTECODE is set.
#
# VDDK: VMware's libraries may not be redistributed and are not in this image. Mount them
# (an init container copies them, k8s/proxy-group/proxy.yaml) at
# /opt/vmware-vix-disklib-distrib, the default of proxy.nbd.vddk_libdir; nbdkit's vddk
# plugin loads them from libdir= (LD_LIBRARY_PATH is deliberately not set). Debian stopped
# shipping that plugin (nbdkit 1.16.1-2), so stage nbdkit-vddk builds it from Debian's
# source of the very nbdkit version the final stage installs. VDDK is x86-64 only, so is
# the proxy's production transport.
#
# The base is pinned to a Debian point release; pin its digest too
# (debian:12.11-slim@sha256:...) where builds must be reproducible. Debian packages are not
# version-pinned (DL3008): a point release removes the versions it replaces, so pins would
# break the build on the next security update instead of taking it.

# --- the project in a venv -----------------------------------------------------------------
FROM debian:12.11-slim AS venv
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
# --system-site-packages: Debian's python3-libnbd (the final stage installs it) is the only
# package in the system site, and the venv sees it without the .venv shim of
# scripts/setup-venv.sh.
RUN python3 -m venv --system-site-packages /opt/vmbackup
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common/ common/
COPY coordinator/ coordinator/
COPY export/ export/
COPY file_restore/ file_restore/
COPY proxy_worker/ proxy_worker/
COPY repository/ repository/
COPY repository_writer/ repository_writer/
COPY vmbackup/ vmbackup/
# Non-editable install; then no pip/setuptools in the image, and every module compiled
# (checked-hash: valid whatever the files' times) since nothing may write .pyc at run time.
RUN /opt/vmbackup/bin/python -m pip install --no-cache-dir --no-compile --prefer-binary . \
    && /opt/vmbackup/bin/python -m pip uninstall -y pip setuptools \
    && /opt/vmbackup/bin/python -m compileall -q -f --invalidation-mode checked-hash \
        /opt/vmbackup/lib

# --- nbdkit's vddk plugin --------------------------------------------------------------------
FROM debian:12.11-slim AS nbdkit-vddk
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# nbdkit itself gives the version to build and its plugin directory.
# hadolint ignore=DL3008
RUN sed -i 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        nbdkit build-essential autoconf automake libtool pkg-config
WORKDIR /build
# apt checks the source files against the signed Sources index.
RUN apt-get source --download-only "nbdkit=$(dpkg-query -W -f='${Version}' nbdkit)" \
    && mkdir src \
    && tar -xf nbdkit_*.orig.tar.* -C src --strip-components=1
WORKDIR /build/src
# Only the plugin (and the helper library it links) is built; the plugin needs no VDDK at
# build time (it dlopens libvixDiskLib.so from libdir= at run time).
RUN autoreconf -fi \
    && ./configure --disable-dependency-tracking --enable-vddk --without-manpages \
        --disable-perl --disable-python --disable-ocaml --disable-rust --disable-ruby \
        --disable-tcl --disable-lua --disable-golang --disable-torrent \
    && make -C common/utils \
    && make -C plugins/vddk nbdkit-vddk-plugin.la \
    && plugindir="$(nbdkit --dump-config | sed -n 's/^plugindir=//p')" \
    && install -D -s -m 0644 plugins/vddk/.libs/nbdkit-vddk-plugin.so \
        "/out${plugindir}/nbdkit-vddk-plugin.so"

# --- the image -------------------------------------------------------------------------------
FROM debian:12.11-slim
LABEL org.opencontainers.image.title="vmbackup" \
      org.opencontainers.image.description="Distributed, agentless, image-level backup for VMware vSphere: coordinator, proxy and writer roles" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.vmbackup.user="10001:10001" \
      io.vmbackup.vddk-libdir="/opt/vmware-vix-disklib-distrib" \
      io.vmbackup.vddk-note="VDDK is not included: mount VMware's vmware-vix-disklib-distrib at io.vmbackup.vddk-libdir (proxy.nbd.vddk_libdir)"
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-libnbd nbdkit tini ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 vmbackup \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin vmbackup \
    && mkdir -p /opt/vmware-vix-disklib-distrib
COPY --from=nbdkit-vddk /out/ /
COPY --from=venv /opt/vmbackup /opt/vmbackup
ENV PATH=/opt/vmbackup/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Fails the build unless nbdkit loads the vddk plugin, the venv sees libnbd and the CLI starts.
RUN nbdkit vddk --dump-plugin >/dev/null \
    && python -c "import nbd" \
    && vmbackup --help >/dev/null
USER 10001:10001
ENTRYPOINT ["/usr/bin/tini", "--", "vmbackup"]
CMD ["--help"]
