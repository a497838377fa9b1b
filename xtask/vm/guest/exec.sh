#!/bin/sh
# The guest's command server (behind `nc -ll -p 7022 -e`): one command per connection, sent as
# one line of base64; answers the command's output, then "SHOAL-EXEC-RC <exit code>".
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
read -r encoded
echo "$encoded" | base64 -d > /tmp/exec.$$
sh /tmp/exec.$$ 2>&1 </dev/null
rc=$?
rm -f /tmp/exec.$$
echo "SHOAL-EXEC-RC $rc"
