echo "about to fail"
echo "something broke: no such widget" >&2
exit 77
