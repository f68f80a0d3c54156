# The seed tutorial's hit counter, as it wrote it: Flask answers on 8000
# and counts hits in redis, found by its service name. Only the last line
# differs: Flask's debug reloader (which forks a watcher) is left off.
from flask import Flask
from redis import Redis

app = Flask(__name__)
redis = Redis(host='redis', port=6379)

@app.route('/')
def hello():
    count = redis.incr('hits')
    return 'Hello World! I have been seen {} times.\n'.format(count)

if __name__ == "__main__":
    app.run(host="0.0.0.0", port=8000, debug=False)
