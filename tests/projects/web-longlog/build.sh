# A long log: 100,000 numbered lines.
set -eu
seq -f 'line %g' 1 100000
