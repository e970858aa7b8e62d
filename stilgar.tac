# twistd -ny stilgar.tac
# The configuration file is found as with the plugin: $STILGAR_CONFIG, then
# /etc/stilgar/stilgar.y(a)ml, /etc/withings/stilgar.y(a)ml, $XDG_CONFIG_HOME/stilgar/stilgar.y(a)ml, ./stilgar.y(a)ml.
from stilgar.launch import make_application

application = make_application()
