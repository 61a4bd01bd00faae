# What a build's own terminal output leaves in its log: colours, a progress counter rewritten
# with carriage returns, a line erased and written again, cursor moves, a window title, and
# CRLF line ends (`mistry logs` in a pipe must leave none of it behind).
printf '\033[1;32mgreen\033[0m and plain\n'
printf 'fetch 10%%\rfetch 55%%\rfetch done\n'
printf 'working...\r\033[2Kall done\n'
printf '\033[1Aup\033[5Cright\033[Gleft\n'
printf '\033]0;a window title\007titled\n'
printf 'windows line\r\n'
printf '\033[31mred \rstill red\033[0m\n'
