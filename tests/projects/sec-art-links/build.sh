# Hostile entries inside the artifacts: links out of the tree, a FIFO, a socket.
set -eu
cd /data/artifacts
echo fine > fine.txt
mkdir sub
echo inner > sub/inner.txt
ln -s /etc/shadow shadow
ln -s ../../../../../../../../etc/shadow relative-shadow
ln -s /etc etc-dir
ln -s sub/inner.txt inner-link
mkfifo fifo
perl -MSocket -e 'socket(S, PF_UNIX, SOCK_STREAM, 0) or die; bind(S, pack_sockaddr_un("sock")) or die $!'
