# Standard ecFlow job trailer: a normal end.
wait
ecflow_client --complete
trap 0
exit 0
