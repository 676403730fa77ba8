#!/usr/bin/env bash
# make deps — install everything study-embed needs on a fresh Debian 12 or 13 machine.
#
#   PostgreSQL server (15 on Debian 12, 17 on Debian 13), pgvector, pg_cron, plpgsql_check
#   (the test suite lints every PL/pgSQL function with it), Chromium, ChromeDriver and the Noto
#   CJK fonts (the UI's browser test: Hangul must render), and the Python dependencies in .venv
#   (the project with its test, lint and ui extras).
#
# Idempotent: a second run checks what is there and returns in seconds.
# pgvector: the Debian binary package where the release has one (trixie);
# otherwise built from Debian's own trixie source package with PGXS.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$here/.venv}"
log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'deps: %s\n' "$*" >&2; exit 1; }

manual_help="Install by hand: PostgreSQL >= 15 with its server headers, pgvector >= 0.7,
pg_cron >= 1.4, plpgsql_check (tests only), chromium, chromedriver and the Noto CJK fonts (tests
only), Python >= 3.11; then run: python3 -m venv .venv && .venv/bin/pip install -e '.[test,lint,ui]'"

# ---------------------------------------------------------------- the system
[ -r /etc/os-release ] || die "cannot read /etc/os-release: this script supports Debian 12 and 13 only.
$manual_help"
. /etc/os-release
case "${ID:-}:${VERSION_ID:-}" in
  debian:12) pgv=15 ;;
  debian:13) pgv=17 ;;
  *) die "unsupported system '${PRETTY_NAME:-unknown}': this script supports Debian 12 and 13 only.
$manual_help" ;;
esac
pg_bin="/usr/lib/postgresql/$pgv/bin"
ext_dir="/usr/share/postgresql/$pgv/extension"

have_system() {
  [ -x "$pg_bin/postgres" ] && [ -x "$pg_bin/initdb" ] && command -v psql >/dev/null &&
    [ -f "$ext_dir/vector.control" ] && [ -f "$ext_dir/pg_cron.control" ] &&
    [ -f "$ext_dir/plpgsql_check.control" ] && have_browser
}

have_browser() {  # the UI's browser test: Debian's Chromium, its driver, fonts with Hangul
  command -v chromium >/dev/null && command -v chromedriver >/dev/null &&
    ls /usr/share/fonts/opentype/noto/NotoSansCJK* >/dev/null 2>&1
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root to install system packages (run as root, or install sudo)"; fi
}

apt_updated=""
apt_update() {
  if [ -z "$apt_updated" ]; then
    log "apt-get update"
    as_root apt-get update -qq
    apt_updated=1
  fi
}

apt_install() {
  apt_update
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

build_pgvector_from_trixie_source() {
  # Debian 12 has no pgvector package: build Debian's trixie source package with PGXS,
  # through a private sources list so that the machine's apt configuration is untouched.
  local tmp src_list uris signed
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  src_list="$tmp/trixie-src.sources"
  uris="$(grep -hs '^URIs:' /etc/apt/sources.list.d/debian.sources | grep -v security | head -n1 | cut -d' ' -f2-)"
  signed="$(grep -hs '^Signed-By:' /etc/apt/sources.list.d/debian.sources | head -n1 | cut -d' ' -f2-)"
  [ -n "$uris" ] || uris="http://deb.debian.org/debian"
  [ -n "$signed" ] || signed="/usr/share/keyrings/debian-archive-keyring.gpg"
  printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: %s\n' \
    "$uris" "$signed" >"$src_list"
  local aptopts=(-o "Dir::Etc::sourcelist=$src_list" -o "Dir::Etc::sourceparts=-"
                 -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache::archives=$tmp/archives")
  mkdir -p "$tmp/lists/partial" "$tmp/archives/partial"
  chmod -R a+rX "$tmp"  # apt downloads as the unprivileged _apt user
  log "fetching Debian's pgvector source package (trixie)"
  (cd "$tmp" && as_root apt-get "${aptopts[@]}" update -qq &&
     as_root apt-get "${aptopts[@]}" source --download-only -qq pgvector >/dev/null)
  local orig
  orig="$(ls "$tmp"/pgvector_*.orig.tar.* 2>/dev/null | head -n1)"
  [ -n "$orig" ] || die "could not download the pgvector source package"
  mkdir "$tmp/src" && tar -xf "$orig" -C "$tmp/src" --strip-components=1
  log "building pgvector $(basename "$orig" | sed 's/pgvector_\(.*\)\.orig.*/\1/') for PostgreSQL $pgv"
  make -s -C "$tmp/src" PG_CONFIG="$pg_bin/pg_config" OPTFLAGS="" >/dev/null
  as_root make -s -C "$tmp/src" PG_CONFIG="$pg_bin/pg_config" install >/dev/null
}

if have_system; then
  log "PostgreSQL $pgv, pgvector, pg_cron, plpgsql_check and Chromium are installed"
else
  apt_install "postgresql-$pgv" "postgresql-client-$pgv" "postgresql-$pgv-cron" \
    "postgresql-$pgv-plpgsql-check" python3 python3-venv ca-certificates \
    chromium chromium-driver fonts-noto-cjk
  if [ ! -f "$ext_dir/vector.control" ]; then
    apt_update
    if apt-cache policy "postgresql-$pgv-pgvector" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
      apt_install "postgresql-$pgv-pgvector"
    else
      apt_install "postgresql-server-dev-$pgv" make gcc libc6-dev dpkg-dev
      build_pgvector_from_trixie_source
    fi
  fi
  have_system || die "PostgreSQL $pgv with pgvector, pg_cron and plpgsql_check, or Chromium, is still incomplete after installing"
fi

# ---------------------------------------------------------------- Python
stamp="$venv/.deps-stamp"
want="$(cat "$here/pyproject.toml" | sha256sum | cut -c1-16)"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  log "Python environment .venv is up to date"
else
  py="${PYTHON:-python3}"
  "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$py is older than 3.11; set PYTHON=/path/to/python3.11+"
  if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then apt_install python3-venv; fi
  [ -x "$venv/bin/python" ] || { log "creating $venv"; "$py" -m venv "$venv"; }
  piplog="$venv/pip.log"
  log "installing Python dependencies into $venv (pip's output: $piplog)"
  # pip compiles every installed file to bytecode one after the other (half of the install's
  # time); compileall does the same on every core.  Compiled up front either way: where
  # PYTHONDONTWRITEBYTECODE is set, nothing imported later would ever be cached.
  if ! { "$venv/bin/python" -m pip install --progress-bar off --upgrade pip &&
         "$venv/bin/python" -m pip install --progress-bar off --no-compile -e "$here[test,lint,ui]"
       } >"$piplog" 2>&1; then
    tail -n 20 "$piplog" >&2
    die "pip failed; its whole output is in $piplog"
  fi
  # (a file that does not compile is skipped, as pip skips it; the project's own modules too,
  # which the editable install leaves where they are)
  "$venv/bin/python" -m compileall -q -j 0 "$here/glue" \
    "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    >>"$piplog" 2>&1 || true
  echo "$want" >"$stamp"
fi
touch "$stamp"  # make's freshness check
log "deps ready: PostgreSQL $pgv ($pg_bin), $("$venv/bin/python" --version)"
