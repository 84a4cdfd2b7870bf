"""writeapi"""
