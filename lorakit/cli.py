def main():
    raise SystemExit("lorakit CLI: not yet")
