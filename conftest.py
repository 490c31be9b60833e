collect_ignore = ["flatjax/__main__.py"]
