"""comfy_sdnq"""
