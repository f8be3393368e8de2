#!/bin/bash
# Run by the postgres image's entrypoint on a primary's first start (mounted
# into /docker-entrypoint-initdb.d/): the image's pg_hba.conf lets other hosts
# into every database ("host all all all"), but "all" does not cover
# replication connections, which pg_basebackup and the streaming replica make.
set -e
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
