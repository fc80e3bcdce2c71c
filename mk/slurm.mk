# A throwaway single-node SLURM cluster for the tests that run the workflow under SLURM
# (tests/slurm_cluster.py starts and stops it; nothing here starts a daemon).
#
#   make slurm   installs Debian's slurmctld, slurmd, the client commands and munge,
#                when we are root with apt-get and they are missing; otherwise it only
#                prints a note. It never fails: without SLURM those tests are skipped.
#
# apt starts no service in a container (invoke-rc.d refuses), which is what we want.

SLURM_DEB_PACKAGES := slurmctld slurmd slurm-client munge

.PHONY: slurm

slurm:
	@PATH="$$PATH:/usr/sbin:/sbin"; \
	if command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 \
	    && command -v sbatch >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then \
	  :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing SLURM and munge from Debian's packages (for the SLURM tests)"; \
	  (apt-get update -qq \
	    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      $(SLURM_DEB_PACKAGES) >/dev/null) \
	    || echo "warning: could not install SLURM; the SLURM tests will be skipped"; \
	else \
	  echo "note: SLURM is not installed (needs root and apt-get: $(SLURM_DEB_PACKAGES));" \
	    "the SLURM tests will be skipped"; \
	fi
